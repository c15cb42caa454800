package ocilayout

import (
	"archive/tar"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/layout"
)

func TestWriteReadBack(t *testing.T) {
	dir := t.TempDir()
	tarPath := filepath.Join(dir, "layer.tar")
	f, _ := os.Create(tarPath)
	tw := tar.NewWriter(f)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "hello", Mode: 0o644, Size: 2})
	tw.Write([]byte("hi"))
	tw.Close()
	f.Close()

	out := filepath.Join(dir, "img")
	d1, err := Write(out, tarPath, Options{Tag: "t1", Env: []string{"A=1"}, WorkingDir: "/w", User: "u"})
	if err != nil {
		t.Fatal(err)
	}
	// Rewriting replaces the layout atomically and is reproducible.
	d2, err := Write(out, tarPath, Options{Tag: "t1", Env: []string{"A=1"}, WorkingDir: "/w", User: "u"})
	if err != nil || d1 != d2 {
		t.Fatalf("rewrite: %v, digests %s vs %s", err, d1, d2)
	}
	p, err := layout.FromPath(out)
	if err != nil {
		t.Fatal(err)
	}
	idx, _ := p.ImageIndex()
	im, _ := idx.IndexManifest()
	if len(im.Manifests) != 1 || im.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "t1" || im.Manifests[0].Digest.String() != d1 {
		t.Fatalf("index: %+v", im.Manifests)
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	if cf.Config.WorkingDir != "/w" || cf.Config.User != "u" || len(cf.Config.Env) != 1 || cf.Architecture != "amd64" {
		t.Fatalf("config: %+v", cf.Config)
	}
	ls, _ := img.Layers()
	if len(ls) != 1 {
		t.Fatalf("%d layers", len(ls))
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("temp dirs left next to the layout: %v", ents)
	}
}
