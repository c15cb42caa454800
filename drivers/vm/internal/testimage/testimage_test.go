package testimage_test

import (
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/openshell/openshell/drivers/vm/internal/testimage"
	"github.com/openshell/openshell/images"
	"github.com/openshell/openshell/internal/testenv"
)

// TestOCIArchiveConverts: the archive WriteOCIArchive writes is read by the image cache
// as the same two-layer image (same manifest digest, the image's user and workdir).
func TestOCIArchiveConverts(t *testing.T) {
	bb, err := exec.LookPath("busybox")
	testenv.Require(t, err == nil && testimage.IsStatic(bb), "a static busybox is needed: apt-get install busybox-static")
	testenv.RequireCommand(t, "mkfs.ext4", "run scripts/setup-vm-host.sh")
	img, err := testimage.Busybox(bb, map[string]string{"/etc/extra": "x"})
	if err != nil {
		t.Fatal(err)
	}
	ls, err := img.Layers()
	if err != nil || len(ls) != 2 {
		t.Fatalf("layers = %d, %v; want 2", len(ls), err)
	}
	dir := t.TempDir()
	archive := filepath.Join(dir, "img.tar")
	if err := testimage.WriteOCIArchive(archive, img, "latest"); err != nil {
		t.Fatal(err)
	}
	c, err := images.NewCache(filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	e, err := c.Ensure(t.Context(), "oci-archive:"+archive, nil)
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	d, _ := img.Digest()
	if e.Digest != d.String() {
		t.Errorf("cache digest %s, want %s", e.Digest, d)
	}
	if e.Config.User != "sandbox" || e.Config.WorkingDir != "/sandbox" {
		t.Errorf("config user %q workdir %q, want sandbox and /sandbox", e.Config.User, e.Config.WorkingDir)
	}
}

func TestIsStatic(t *testing.T) {
	if testimage.IsStatic("/nonexistent") {
		t.Error("a missing file is not a static binary")
	}
	if sh, err := exec.LookPath("sh"); err == nil && testimage.IsStatic(sh) {
		t.Logf("%s is static here", sh)
	}
}
