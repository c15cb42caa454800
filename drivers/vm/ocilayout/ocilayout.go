// Package ocilayout writes a one-layer OCI image layout from a root filesystem tar.
// scripts/build-base-image.sh uses it (through cmd mkimage) for the project's base
// image, and the VM driver's tests use it to make tiny local images without any
// container registry.
package ocilayout

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Options describe the image config.
type Options struct {
	Tag        string   // ref.name annotation, e.g. "latest"
	Env        []string // KEY=VALUE
	WorkingDir string
	User       string
	Entrypoint []string
	Cmd        []string
	Created    time.Time // zero = epoch (reproducible)
}

// Write builds an image whose single layer is the (uncompressed) tar at layerTar and
// writes it as an OCI layout at dir, replacing dir atomically when it exists. It
// returns the manifest digest.
func Write(dir, layerTar string, o Options) (digest string, retErr error) {
	if o.Tag == "" {
		o.Tag = "latest"
	}
	layer, err := tarball.LayerFromFile(layerTar)
	if err != nil {
		return "", fmt.Errorf("oci layout: layer from %s: %w", layerTar, err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return "", fmt.Errorf("oci layout: append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return "", fmt.Errorf("oci layout: config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Created = v1.Time{Time: o.Created}
	cf.Config.Env = o.Env
	cf.Config.WorkingDir = o.WorkingDir
	cf.Config.User = o.User
	cf.Config.Entrypoint = o.Entrypoint
	cf.Config.Cmd = o.Cmd
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return "", fmt.Errorf("oci layout: set config: %w", err)
	}
	img = mutate.MediaType(img, "application/vnd.oci.image.manifest.v1+json")
	img = mutate.ConfigMediaType(img, "application/vnd.oci.image.config.v1+json")
	h, err := img.Digest()
	if err != nil {
		return "", fmt.Errorf("oci layout: digest: %w", err)
	}

	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return "", fmt.Errorf("oci layout: %w", err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".tmp*")
	if err != nil {
		return "", fmt.Errorf("oci layout: %w", err)
	}
	defer func() {
		if retErr != nil {
			os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", fmt.Errorf("oci layout: %w", err)
	}
	p, err := layout.Write(tmp, empty.Index)
	if err != nil {
		return "", fmt.Errorf("oci layout: init %s: %w", tmp, err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": o.Tag,
	}), layout.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"})); err != nil {
		return "", fmt.Errorf("oci layout: write image: %w", err)
	}
	old := dir + ".old"
	os.RemoveAll(old)
	if _, err := os.Lstat(dir); err == nil {
		if err := os.Rename(dir, old); err != nil {
			return "", fmt.Errorf("oci layout: move old %s aside: %w", dir, err)
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", fmt.Errorf("oci layout: install %s: %w", dir, err)
	}
	os.RemoveAll(old)
	return h.String(), nil
}
