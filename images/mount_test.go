//go:build linux

package images

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/openshell/openshell/internal/testenv"
)

// TestDiskLoopMount mounts a converted disk read-only the way the guest does
// and checks the tree through the kernel's own ext4 driver.
func TestDiskLoopMount(t *testing.T) {
	requireTools(t)
	testenv.RequireRoot(t)
	mount := testenv.RequireCommand(t, "mount", "apt-get install mount")
	dir := filepath.Join(t.TempDir(), "layout")
	writeLayout(t, dir, richImage(t), "")
	c := newTestCache(t)
	e, err := c.Ensure(t.Context(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	mnt := t.TempDir()
	out, err := exec.Command(mount, "-t", "ext4", "-o", "loop,ro", e.DiskPath, mnt).CombinedOutput()
	testenv.Require(t, err == nil, "cannot loop-mount here: "+string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", mnt, err, out)
		}
	})
	st, err := os.Lstat(filepath.Join(mnt, "bin/su"))
	if err != nil || st.Mode() != 0o755|os.ModeSetuid || st.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Errorf("bin/su: %v %v", st, err)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "bin/tool")); err != nil || string(b) != "tool-v2" {
		t.Errorf("bin/tool: %q %v", b, err)
	}
	if _, err := os.Lstat(filepath.Join(mnt, "usr/lib/liba.so")); !os.IsNotExist(err) {
		t.Errorf("whiteout target visible: %v", err)
	}
	if target, err := os.Readlink(filepath.Join(mnt, "usr/lib/libfoo.so")); err != nil || target != "libb.so" {
		t.Errorf("symlink: %q %v", target, err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "new"), nil, 0o644); err == nil {
		t.Error("wrote to a read-only mount")
	}
}
