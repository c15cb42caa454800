// Package testimage builds small OCI images for the VM driver's tests: a static busybox
// root filesystem in two layers (binaries, then accounts and markers), so image sources
// (registry, OCI archive, layout) are exercised with a real multi-layer image the real
// supervisor can run commands from.
package testimage

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// MarkerPath is a file of the upper layer; its content is Marker.
const (
	MarkerPath = "etc/openshell-testimage"
	Marker     = "openshell test image, upper layer\n"
)

// IsStatic reports whether the ELF file at path has no program interpreter (runs
// without the host's dynamic loader, as the guest needs).
func IsStatic(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

type entry struct {
	hdr  tar.Header
	body []byte
}

func layer(ents []entry) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := e.hdr
		h.ModTime = time.Unix(0, 0)
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(&h); err != nil {
			return nil, fmt.Errorf("testimage: tar header %s: %w", h.Name, err)
		}
		if _, err := tw.Write(e.body); err != nil {
			return nil, fmt.Errorf("testimage: tar body %s: %w", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
		tarball.WithMediaType(types.OCILayer))
}

// Busybox builds a linux/amd64 OCI image from the static busybox at busyboxPath: layer
// one holds busybox and its applet links, layer two /etc/passwd, /etc/group, MarkerPath
// and extra files (path without leading slash → content). The image runs as user
// sandbox (uid 1000) in /sandbox, PATH=/bin.
func Busybox(busyboxPath string, extra map[string]string) (v1.Image, error) {
	bb, err := os.ReadFile(busyboxPath)
	if err != nil {
		return nil, fmt.Errorf("testimage: read busybox: %w", err)
	}
	list, err := exec.Command(busyboxPath, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("testimage: %s --list: %w", busyboxPath, err)
	}
	dir := func(name string, mode int64, uid int) entry {
		return entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, Uid: uid, Gid: uid}}
	}
	file := func(name, body string) entry {
		return entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644}, body: []byte(body)}
	}
	link := func(name, target string) entry {
		return entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
	}
	base := []entry{}
	for _, d := range []string{"bin/", "etc/", "root/", "proc/", "sys/", "dev/", "run/", "var/", "usr/"} {
		base = append(base, dir(d, 0o755, 0))
	}
	base = append(base, dir("tmp/", 0o1777, 0), dir("sandbox/", 0o755, 1000),
		entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755}, body: bb})
	for _, a := range strings.Fields(string(list)) {
		if a != "busybox" && !strings.Contains(a, "/") {
			base = append(base, link("bin/"+a, "busybox"))
		}
	}
	base = append(base, link("sbin", "bin"), link("usr/bin", "../bin"), link("usr/sbin", "../bin"))
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000:sandbox:/sandbox:/bin/sh\n",
		"etc/group":  "root:x:0:\nsandbox:x:1000:\n",
		MarkerPath:   Marker,
	}
	for k, v := range extra {
		files[strings.TrimPrefix(k, "/")] = v
	}
	names := make([]string, 0, len(files))
	for k := range files {
		names = append(names, k)
	}
	sort.Strings(names)
	var upper []entry
	for _, n := range names {
		upper = append(upper, file(n, files[n]))
	}
	l1, err := layer(base)
	if err != nil {
		return nil, err
	}
	l2, err := layer(upper)
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, l1, l2)
	if err != nil {
		return nil, fmt.Errorf("testimage: append layers: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Env = []string{"PATH=/bin:/usr/bin:/sbin:/usr/sbin"}
	cf.Config.WorkingDir = "/sandbox"
	cf.Config.User = "sandbox"
	cf.Config.Cmd = []string{"/bin/sh"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("testimage: set config: %w", err)
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	return img, nil
}

// WriteOCIArchive writes img as a tarball of an OCI image layout (tagged tag) to path.
func WriteOCIArchive(path string, img v1.Image, tag string) error {
	dir, err := os.MkdirTemp(filepath.Dir(path), ".oci-layout-*")
	if err != nil {
		return fmt.Errorf("testimage: %w", err)
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("testimage: layout %s: %w", dir, err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag}),
		layout.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"})); err != nil {
		return fmt.Errorf("testimage: write layout: %w", err)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("testimage: %w", err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	err = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		h, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			h.Name += "/"
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		defer src.Close()
		_, err = io.Copy(tw, src)
		return err
	})
	if err != nil {
		return fmt.Errorf("testimage: tar %s: %w", path, err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("testimage: %w", err)
	}
	return f.Close()
}
