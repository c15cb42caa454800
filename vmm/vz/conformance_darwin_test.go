package vz_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/openshell/openshell/images/bundle"
	"github.com/openshell/openshell/internal/testenv"
	"github.com/openshell/openshell/vmm"
	"github.com/openshell/openshell/vmm/vmmtest"
	"github.com/openshell/openshell/vmm/vz"
)

var (
	fxOnce sync.Once
	fx     struct {
		dir, kernel, initrd, image string
		err                        error
	}
)

// fixture: Debian's arm64 Image and modules (OPENSHELL_VM_DIR/kernel-arm64, fetched
// by scripts/setup-vm-host.sh on Debian; the macOS workflow downloads them from its
// Linux job), testinit built for arm64 as /init, and a read-only image disk.
func fixture(t *testing.T) (kernel, initrd, image string) {
	t.Helper()
	err := vz.Available()
	testenv.Require(t, err == nil, fmt.Sprintf("Virtualization.framework: %v", err))
	_, kerr := bundle.FindKernelFor("", "arm64")
	testenv.Require(t, kerr == nil, fmt.Sprintf("arm64 kernel: %v (set OPENSHELL_VM_DIR to a dir holding kernel-arm64/)", kerr))
	testenv.RequireCommand(t, "mkfs.ext4", "brew install e2fsprogs and put its sbin on PATH")
	fxOnce.Do(func() {
		f := &fx
		if f.dir, f.err = os.MkdirTemp("", "vz-fx-"); f.err != nil {
			return
		}
		if f.kernel, f.err = bundle.FindKernelFor("", "arm64"); f.err != nil {
			return
		}
		mods, err := bundle.ModulesDir(f.kernel)
		if err != nil {
			f.err = err
			return
		}
		initBin := filepath.Join(f.dir, "testinit")
		cmd := exec.Command("go", "build", "-o", initBin, "github.com/openshell/openshell/guest/internal/testinit")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64")
		if out, err := cmd.CombinedOutput(); err != nil {
			f.err = fmt.Errorf("build testinit: %v: %s", err, out)
			return
		}
		if f.initrd, f.err = bundle.BuildInitramfs(context.Background(), initBin, mods, filepath.Join(f.dir, "cache")); f.err != nil {
			return
		}
		root := filepath.Join(f.dir, "rootfs", "etc")
		if f.err = os.MkdirAll(root, 0o755); f.err != nil {
			return
		}
		if f.err = os.WriteFile(filepath.Join(root, "openshell-test-image"), []byte("image-ok\n"), 0o644); f.err != nil {
			return
		}
		f.image = filepath.Join(f.dir, "image.ext4")
		f.err = vmm.CreateImageDisk(context.Background(), f.image, filepath.Dir(root), 16<<20)
	})
	if fx.err != nil {
		t.Fatalf("vz fixture: %v", fx.err)
	}
	return fx.kernel, fx.initrd, fx.image
}

// TestConformance runs the vmm conformance suite on Virtualization.framework. The
// test binary must be signed with entitlements.plist (see the macOS workflow).
func TestConformance(t *testing.T) {
	kernel, initrd, image := fixture(t)
	t.Cleanup(func() { _ = os.RemoveAll(fx.dir) })
	vmmtest.Run(t, vmmtest.Harness{
		Features: vz.Features(),
		New: func(t *testing.T, name string) vmm.Machine {
			dir, err := os.MkdirTemp("", "vz-")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = os.RemoveAll(dir) })
			data := filepath.Join(dir, "data.ext4")
			if err := vmm.CreateWritableDisk(data, 64<<20); err != nil {
				t.Fatal(err)
			}
			m, err := vz.New(vmm.Config{Name: name, MemoryMiB: 512, Kernel: kernel, Initrd: initrd,
				Disks: []vmm.Disk{{Path: image, ReadOnly: true}, {Path: data}}, StateDir: dir})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				_ = m.Kill()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_ = m.Wait(ctx)
			})
			return m
		},
		BootTimeout: 60 * time.Second,
	})
}
