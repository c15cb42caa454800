package main

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// TestImageLayout writes an image from freshly built static binaries and reads the
// archive back as `docker load` would: the tag, a non-root user, the gateway as
// entrypoint, and the files of the layout with their owners and modes.
func TestImageLayout(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte("package main\nfunc main() {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "static")
	cmd := exec.Command("go", "build", "-o", bin, src)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "img.tar")
	bins := map[string]string{"openshell-gateway": bin, "openshell-sandbox": bin, "openshell-copy": bin}
	if err := run("openshell/gateway:9.9.9", out, ca, "9.9.9", bins); err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag("openshell/gateway:9.9.9")
	img, err := tarball.ImageFromPath(out, &tag)
	if err != nil {
		t.Fatalf("archive does not load as openshell/gateway:9.9.9: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.User != "65532:65532" || !slices.Equal(cf.Config.Entrypoint, []string{"/usr/local/bin/openshell-gateway"}) {
		t.Errorf("user %q entrypoint %v", cf.Config.User, cf.Config.Entrypoint)
	}
	if cf.OS != "linux" || cf.Architecture == "" || cf.Config.Labels["org.opencontainers.image.version"] != "9.9.9" {
		t.Errorf("os %q arch %q labels %v", cf.OS, cf.Architecture, cf.Config.Labels)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("%d layers (%v), want 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got := map[string]*tar.Header{}
	contents := map[string]string{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[strings.TrimSuffix(h.Name, "/")] = h
		if strings.HasPrefix(h.Name, "etc/") && h.Typeflag == tar.TypeReg {
			b, _ := io.ReadAll(tr)
			contents[h.Name] = string(b)
		}
	}
	for p, want := range map[string]struct {
		mode int64
		uid  int
	}{
		"tmp": {0o1777, 0}, "var/lib/openshell": {0o700, 65532},
		"usr/local/bin/openshell-gateway": {0o755, 0}, "usr/local/bin/openshell-sandbox": {0o755, 0},
		"usr/local/bin/openshell-copy": {0o755, 0}, "etc/ssl/certs/ca-certificates.crt": {0o644, 0},
	} {
		h := got[p]
		if h == nil {
			t.Errorf("%s missing from the layer", p)
			continue
		}
		if h.Mode != want.mode || h.Uid != want.uid {
			t.Errorf("%s: mode %o uid %d, want %o %d", p, h.Mode, h.Uid, want.mode, want.uid)
		}
	}
	if !strings.Contains(contents["etc/passwd"], "openshell:x:65532:65532:") || !strings.Contains(contents["etc/group"], "openshell:x:65532:") {
		t.Errorf("passwd/group lack the non-root user:\n%s\n%s", contents["etc/passwd"], contents["etc/group"])
	}

	// Same inputs, same image: the layout has fixed owners and times.
	out2 := filepath.Join(dir, "img2.tar")
	if err := run("openshell/gateway:9.9.9", out2, ca, "9.9.9", bins); err != nil {
		t.Fatal(err)
	}
	img2, err := tarball.ImageFromPath(out2, &tag)
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img.Digest()
	d2, _ := img2.Digest()
	if d1 != d2 {
		t.Errorf("two builds differ: %s vs %s", d1, d2)
	}
}

// TestImageRefusesBadInput: a dynamically linked binary, a missing entrypoint and a bad
// tag are refused with the fix, and no archive is left.
func TestImageRefusesBadInput(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "img.tar")
	ca := "/etc/ssl/certs/ca-certificates.crt"
	for name, tc := range map[string]struct {
		tag  string
		bins map[string]string
		want string
	}{
		"dynamic":        {"openshell/gateway:1", map[string]string{"openshell-gateway": "/bin/true"}, "CGO_ENABLED=0"},
		"no entrypoint":  {"openshell/gateway:1", map[string]string{"openshell-sandbox": "/bin/true"}, "-bin openshell-gateway=PATH is required"},
		"bad tag":        {"Not A Tag", map[string]string{"openshell-gateway": "/bin/true"}, "-tag"},
		"missing binary": {"openshell/gateway:1", map[string]string{"openshell-gateway": filepath.Join(dir, "nope")}, "-bin openshell-gateway"},
	} {
		t.Run(name, func(t *testing.T) {
			err := run(tc.tag, out, ca, "1", tc.bins)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one naming %q", err, tc.want)
			}
			if _, serr := os.Stat(out); serr == nil {
				t.Fatal("an archive was written for bad input")
			}
		})
	}
}
