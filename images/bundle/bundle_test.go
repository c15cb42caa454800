package bundle

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/openshell/openshell/internal/testenv"
)

func TestFindKernelOrder(t *testing.T) {
	dir := t.TempDir()
	flagK := filepath.Join(dir, "flag-vmlinux")
	envK := filepath.Join(dir, "env-vmlinux")
	xdg := filepath.Join(dir, "xdg")
	xdgK := filepath.Join(xdg, "openshell", "vm", "kernel", "vmlinux")
	for _, p := range []string{flagK, envK, xdgK} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("k"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("XDG_DATA_HOME", xdg)
	t.Setenv(EnvKernel, envK)
	t.Setenv("OPENSHELL_VM_DIR", filepath.Join(dir, "none"))
	for _, tc := range []struct{ flag, env, want string }{
		{flagK, envK, flagK},
		{"", envK, envK},
		{"", "", xdgK},
	} {
		t.Setenv(EnvKernel, tc.env)
		got, err := FindKernel(tc.flag)
		if err != nil || got != tc.want {
			t.Fatalf("FindKernel(%q) with env %q = %q, %v; want %q", tc.flag, tc.env, got, err, tc.want)
		}
	}
	// An explicit path that does not exist is an error, not a fall-through.
	_, err := FindKernel(filepath.Join(dir, "missing"))
	if !errors.Is(err, ErrKernelNotFound) || !strings.Contains(err.Error(), "--kernel flag") {
		t.Fatalf("missing flag kernel: %v", err)
	}
}

func TestFindKernelMissingSaysHowToFix(t *testing.T) {
	if _, err := os.Stat(filepath.Join(SystemVMDir, "kernel", "vmlinux")); err == nil {
		t.Skip("a system kernel is installed; the fall-through would find it")
	}
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	t.Setenv(EnvKernel, "")
	t.Setenv("OPENSHELL_VM_DIR", "")
	_, err := FindKernel("")
	if !errors.Is(err, ErrKernelNotFound) || !strings.Contains(err.Error(), "scripts/setup-vm-host.sh") {
		t.Fatalf("got %v", err)
	}
}

func TestNewcReadableByCpio(t *testing.T) {
	cpio := testenv.RequireCommand(t, "cpio", "run scripts/setup-vm-host.sh (installs cpio)")
	var buf bytes.Buffer
	w := &newcWriter{w: &buf}
	w.Dir("dev", 0o755)
	w.CharDev("dev/console", 0o600, 5, 1)
	w.Dir("lib", 0o755)
	w.File("lib/a.txt", 0o644, []byte("hello"))
	w.File("init", 0o755, []byte("12345678"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(cpio, "-t", "-v", "--quiet")
	cmd.Stdin = &buf
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v: %s", err, out)
	}
	s := string(out)
	for _, want := range []string{"dev/console", "lib/a.txt", "init", "crw-------"} {
		if !strings.Contains(s, want) {
			t.Fatalf("cpio listing lacks %q:\n%s", want, s)
		}
	}
}

func TestBuildInitramfsRealModules(t *testing.T) {
	kernel, err := FindKernel("")
	testenv.Require(t, err == nil, "guest kernel missing; run scripts/setup-vm-host.sh")
	mdir, err := ModulesDir(kernel)
	if err != nil {
		t.Fatal(err)
	}
	cpio := testenv.RequireCommand(t, "cpio", "run scripts/setup-vm-host.sh (installs cpio)")
	initBin := filepath.Join(t.TempDir(), "init")
	build := exec.Command("go", "build", "-o", initBin, "./testdata/staticinit")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build static init: %v: %s", err, out)
	}
	cache := t.TempDir()
	p1, err := BuildInitramfs(t.Context(), initBin, mdir, cache)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := BuildInitramfs(t.Context(), initBin, mdir, cache)
	if err != nil || p2 != p1 {
		t.Fatalf("second build: %q %v, want cached %q", p2, err, p1)
	}
	f, err := os.Open(p1)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Uncompressed: the guest kernel copies it rather than inflating it every boot.
	cmd := exec.Command(cpio, "-t", "--quiet")
	cmd.Stdin = f
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v: %s", err, out)
	}
	kver := filepath.Base(mdir)
	for _, want := range []string{"init", "dev/console", "lib/modules/" + kver + "/vmw_vsock_virtio_transport.ko", "lib/modules/" + kver + "/overlay.ko", "lib/modules/" + kver + "/virtio_blk.ko"} {
		if !strings.Contains(string(out), want+"\n") {
			t.Fatalf("initramfs lacks %s:\n%s", want, out)
		}
	}
	// A dynamically linked init is refused with the fix.
	if _, err := BuildInitramfs(t.Context(), "/bin/true", mdir, cache); err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Fatalf("dynamic init accepted or unclear error: %v", err)
	}
}

// TestInitramfsRefusesMixedArchitectures: an arm64 init with x86_64 modules (or the
// reverse) would boot into a guest that cannot load its drivers; refuse it at build.
func TestInitramfsRefusesMixedArchitectures(t *testing.T) {
	amd, aerr := FindKernelFor("", "amd64")
	arm, rerr := FindKernelFor("", "arm64")
	if aerr != nil || rerr != nil {
		testenv.Require(t, false, fmt.Sprintf("both guest kernels (run scripts/setup-vm-host.sh): %v %v", aerr, rerr))
	}
	armMods, err := ModulesDir(arm)
	if err != nil {
		t.Fatal(err)
	}
	amdMods, err := ModulesDir(amd)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "init-arm64")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/openshell/openshell/guest/internal/testinit")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v %s", err, out)
	}
	if _, err := BuildInitramfs(t.Context(), bin, amdMods, filepath.Join(dir, "cache")); err == nil || !strings.Contains(err.Error(), "arm64 but the kernel modules") {
		t.Fatalf("arm64 init with amd64 modules: %v", err)
	}
	if _, err := BuildInitramfs(t.Context(), bin, armMods, filepath.Join(dir, "cache")); err != nil {
		t.Fatalf("arm64 init with arm64 modules: %v", err)
	}
	if filepath.Base(arm) != "Image" {
		t.Fatalf("arm64 kernel %s: want the uncompressed Image", arm)
	}
}
