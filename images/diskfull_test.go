//go:build linux

package images

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/internal/testenv"
)

// smallTmpfs mounts a tmpfs of size bytes for the test and unmounts it after.
func smallTmpfs(t *testing.T, size string) string {
	t.Helper()
	testenv.RequireRoot(t)
	dir := filepath.Join(t.TempDir(), "small")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size)
	testenv.Require(t, err == nil, "cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): "+errString(err))
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// TestEnsureDiskFull runs conversions on a cache that cannot hold them: the
// rootfs does not fit while unpacking, or the ext4 image does not fit after.
// Either way Ensure fails with ErrNoSpace and leaves no entry and no debris.
func TestEnsureDiskFull(t *testing.T) {
	requireTools(t)
	for _, tc := range []struct {
		name, tmpfs string
		fileSize    int
	}{
		{"unpack", "2m", 3 << 20},
		{"ext4", "5m", 3 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mnt := smallTmpfs(t, tc.tmpfs)
			dir := filepath.Join(t.TempDir(), "layout")
			writeLayout(t, dir, imageOf(t, layerOf(t,
				ent{name: "big1", body: randomBytes(tc.fileSize, 1)},
				ent{name: "small", body: "x"},
			)), "")
			c, err := NewCache(filepath.Join(mnt, "cache"))
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Ensure(t.Context(), "oci-layout:"+dir, nil)
			if !errors.Is(err, ErrNoSpace) {
				t.Fatalf("err = %v, want ErrNoSpace", err)
			}
			if !strings.Contains(err.Error(), c.Dir()) && !strings.Contains(err.Error(), mnt) {
				t.Errorf("error %q does not name the cache location", err)
			}
			t.Logf("error: %v", err)
			if es, _ := c.List(); len(es) != 0 {
				t.Errorf("entries after a failed conversion: %+v", es)
			}
			assertNoDebris(t, c)
		})
	}
}

// TestBuildExt4DiskFull makes mkfs.ext4 itself run out of space: the free
// space passes the up-front estimate but not the filesystem's metadata.
func TestBuildExt4DiskFull(t *testing.T) {
	requireTools(t)
	mnt := smallTmpfs(t, "3090k")
	rootfs := t.TempDir()
	if err := os.WriteFile(filepath.Join(rootfs, "big"), []byte(randomBytes(3<<20, 2)), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(mnt, "rootfs.ext4")
	_, err := BuildExt4(t.Context(), rootfs, out)
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("err = %v, want ErrNoSpace", err)
	}
	t.Logf("error: %v", err)
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("half-written image left at %s: %v", out, err)
	}
}
