package qemu_test

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
)

var (
	arm64Once sync.Once
	arm64Fx   struct {
		kernel, initrd string
		err            error
	}
)

// requireARM64 returns Debian's arm64 cloud kernel (an uncompressed Image, what
// Virtualization.framework boots) and an initramfs with testinit built for arm64.
func requireARM64(t *testing.T) (kernel, initrd string) {
	t.Helper()
	testenv.RequireCommand(t, "qemu-system-aarch64", "run scripts/setup-vm-host.sh (installs qemu-system-arm)")
	_, kerr := bundle.FindKernelFor("", "arm64")
	testenv.Require(t, kerr == nil, fmt.Sprintf("arm64 guest kernel: %v (run scripts/setup-vm-host.sh)", kerr))
	requireVM(t) // the shared image disk and fixture dir
	arm64Once.Do(func() {
		f := &arm64Fx
		if f.kernel, f.err = bundle.FindKernelFor("", "arm64"); f.err != nil {
			return
		}
		mods, err := bundle.ModulesDir(f.kernel)
		if err != nil {
			f.err = err
			return
		}
		initBin := filepath.Join(fixtureDir, "testinit-arm64")
		cmd := exec.Command("go", "build", "-o", initBin, "github.com/openshell/openshell/guest/internal/testinit")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64")
		if out, err := cmd.CombinedOutput(); err != nil {
			f.err = fmt.Errorf("build arm64 testinit: %v: %s", err, out)
			return
		}
		f.initrd, f.err = bundle.BuildInitramfs(context.Background(), initBin, mods, filepath.Join(fixtureDir, "cache"))
	})
	if arm64Fx.err != nil {
		t.Fatalf("arm64 fixture: %v", arm64Fx.err)
	}
	return arm64Fx.kernel, arm64Fx.initrd
}

// TestARM64GuestBoots boots the arm64 bundle (arm64 Image, the same initramfs
// builder, the same channel) under qemu-system-aarch64 -M virt with TCG: the guest
// answers over vsock, serves a host→guest dial, and powers off on "bye".
func TestARM64GuestBoots(t *testing.T) {
	kernel, initrd := requireARM64(t)
	_, _, image := requireVM(t)
	cfg := vmm.Config{
		Name: "arm64", VCPUs: 1, MemoryMiB: 256, Kernel: kernel, Initrd: initrd,
		Disks:    []vmm.Disk{{Path: image, ReadOnly: true}, {Path: writableDisk(t)}},
		StateDir: shortStateDir(t),
	}
	m := newMachine(t, cfg)
	start := time.Now()
	a := bootAndAsk(t, t.Context(), m, true)
	t.Logf("arm64 boot→answer→poweroff in %s (accel %s, transport %s)", time.Since(start).Round(time.Millisecond), m.Accel().Name, m.Transport().Name)
	if a.Image != "image-ok" || a.PID != 1 || a.Root != "overlay" || a.Transport != "vsock" {
		t.Fatalf("answer %+v: want image-ok, pid 1, overlay root, vsock", a)
	}
	args, _ := m.Args()
	if args[0] != "-M" || args[1] != "virt,memory-backend=mem" {
		t.Fatalf("arm64 guest not on -M virt: %v", args[:4])
	}
}
