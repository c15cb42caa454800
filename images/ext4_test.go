package images

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBuildExt4ManySmallFiles checks the size and inode estimate holds for a
// tree that is mostly metadata (where a data-only estimate runs out of inodes).
func TestBuildExt4ManySmallFiles(t *testing.T) {
	requireTools(t)
	rootfs, err := os.MkdirTemp("/dev/shm", "openshell-ext4-")
	if err != nil {
		rootfs = t.TempDir()
	} else {
		t.Cleanup(func() { _ = os.RemoveAll(rootfs) })
	}
	long := strings.Repeat("n", 200)
	for d := range 40 {
		dir := filepath.Join(rootfs, fmt.Sprintf("dir%02d", d))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for f := range 150 {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%s%04d", long, f)), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	out := filepath.Join(t.TempDir(), "rootfs.ext4")
	size, err := BuildExt4(t.Context(), rootfs, out)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(out)
	if err != nil || st.Size() != size {
		t.Fatalf("image %v, %v; want size %d", st, err, size)
	}
	if got := debugfs(t, out, "ls -p /dir39"); !strings.Contains(got, long+"0149") {
		t.Errorf("last file missing from the image")
	}
	if o, err := runFsck(out); err != nil {
		t.Errorf("e2fsck: %v\n%s", err, o)
	}
}
