package libkrun_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openshell/openshell/internal/testenv"
	"github.com/openshell/openshell/vmm"
	"github.com/openshell/openshell/vmm/channel"
	"github.com/openshell/openshell/vmm/libkrun"
	"github.com/openshell/openshell/vmm/vmmtest"
)

// TestMain: the libkrun backend runs each VM in an enter process; in these tests
// that process is this test binary again (`<test> libkrun-enter SPEC`).
func TestMain(m *testing.M) {
	if len(os.Args) == 3 && os.Args[1] == "libkrun-enter" {
		err := libkrun.Enter(os.Args[2])
		fmt.Fprintln(os.Stderr, "libkrun enter:", err)
		os.Exit(1)
	}
	code := m.Run()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// standIn builds the C stand-in libkrun (testdata/standin.c, NOT libkrun: it records
// calls and plays the guest) in two variants: current and old (without the calls
// that came last).
func standIn(t *testing.T) (current, old string) {
	t.Helper()
	testenv.RequireCommand(t, "gcc", "run scripts/setup-vm-host.sh (installs gcc)")
	if !cgoEnabled {
		testenv.Require(t, false, "this test binary was built without cgo; install gcc (scripts/setup-vm-host.sh)")
	}
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "libkrun-standin-")
		if buildErr != nil {
			return
		}
		for _, v := range []struct{ dir, def string }{{"current", ""}, {"old", "-DOLD_LIBKRUN"}} {
			_ = os.MkdirAll(filepath.Join(buildDir, v.dir), 0o755)
			args := []string{"-shared", "-fPIC", "-O1", "-o", filepath.Join(buildDir, v.dir, "libkrun.so.1"), "testdata/standin.c"}
			if v.def != "" {
				args = append(args, v.def)
			}
			if out, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("gcc %v: %v: %s", args, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(buildDir, "current", "libkrun.so.1"), filepath.Join(buildDir, "old", "libkrun.so.1")
}

func stateDir(t *testing.T) string {
	d, err := os.MkdirTemp("", "krun-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

// fakeKernel writes a file whose header is an ELF vmlinux or an arm64 Image: the
// backend reads only the header to pick krun_set_kernel's format.
func fakeKernel(t *testing.T, kind string) string {
	hdr := make([]byte, 64)
	switch kind {
	case "elf":
		copy(hdr, "\x7fELF")
	case "arm64":
		copy(hdr[56:], "ARM\x64")
	case "bzimage":
		copy(hdr, "MZ")
	}
	p := filepath.Join(t.TempDir(), "kernel-"+kind)
	if err := os.WriteFile(p, hdr, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func newMachine(t *testing.T, lib string, cfg vmm.Config) *libkrun.Machine {
	t.Helper()
	m, err := libkrun.NewMachine(cfg, libkrun.WithLibrary(lib), libkrun.WithEnterCommand(os.Args[0], "libkrun-enter"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = m.Kill()
		select {
		case <-m.Exited():
		case <-time.After(10 * time.Second):
			t.Errorf("enter process %d did not exit after kill", m.PID())
		}
	})
	return m
}

// TestCallsMatchCAPI: the calls the backend makes, in order and with their
// arguments, as libkrun.h documents them (recorded by the stand-in library).
func TestCallsMatchCAPI(t *testing.T) {
	lib, _ := standIn(t)
	dir := stateDir(t)
	log := filepath.Join(t.TempDir(), "calls.log")
	t.Setenv("KRUN_STANDIN_LOG", log)
	kernel := fakeKernel(t, "elf")
	share := t.TempDir()
	cfg := vmm.Config{
		Name: "calls", VCPUs: 2, MemoryMiB: 384, Kernel: kernel, Initrd: "/b/initrd.gz",
		Cmdline:    "openshell_token=x",
		Disks:      []vmm.Disk{{Path: kernel, ReadOnly: true}, {Path: lib}},
		SharedDirs: []vmm.SharedDir{{Tag: "work", Path: share}},
		StateDir:   dir,
	}
	m := newMachine(t, lib, cfg)
	if err := m.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	ln, err := m.Host().Listen(channel.PortBootstrap)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := channel.Accept(t.Context(), ln)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || !strings.Contains(line, "stand-in") {
		t.Fatalf("guest line %q, %v", line, err)
	}
	if _, err := io.WriteString(c, "bye\n"); err != nil {
		t.Fatal(err)
	}
	if err := m.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "vsock.sock")
	want := []string{
		"krun_set_log_level level=0",
		"krun_create_ctx",
		"krun_set_vm_config ctx=7 vcpus=2 ram_mib=384",
		"krun_set_kernel ctx=7 kernel=" + kernel + " format=1 initramfs=/b/initrd.gz cmdline=console=hvc0 panic=-1 quiet openshell_token=x",
		"krun_add_disk ctx=7 block_id=disk0 path=" + kernel + " read_only=1",
		"krun_add_disk ctx=7 block_id=disk1 path=" + lib + " read_only=0",
		"krun_add_virtiofs ctx=7 tag=work path=" + share,
		"krun_disable_implicit_vsock ctx=7",
		"krun_add_vsock ctx=7 tsi_features=0",
		"krun_add_vsock_port2 ctx=7 port=1024 path=" + sock + "_1024 listen=0",
		"krun_add_vsock_port2 ctx=7 port=1025 path=" + sock + "_1025 listen=0",
		"krun_add_vsock_port2 ctx=7 port=1026 path=" + sock + "_1026 listen=0",
		"krun_add_vsock_port2 ctx=7 port=1027 path=" + sock + "_1027 listen=0",
		"krun_set_console_output ctx=7 path=" + filepath.Join(dir, "console.log"),
		"krun_start_enter ctx=7",
	}
	got := strings.Split(strings.TrimSpace(string(b)), "\n")
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("libkrun calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestConformanceWithStandIn runs the vmm conformance suite on the libkrun backend's
// process model (enter process, unix-port channel, stop, kill, crash, re-adoption by
// PID) with the stand-in library in place of libkrun: no guest kernel boots.
func TestConformanceWithStandIn(t *testing.T) {
	lib, _ := standIn(t)
	kernel := fakeKernel(t, "elf")
	vmmtest.Run(t, vmmtest.Harness{
		Features: libkrun.Features(),
		New: func(t *testing.T, name string) vmm.Machine {
			return newMachine(t, lib, vmm.Config{Name: name, Kernel: kernel, StateDir: stateDir(t)})
		},
		BootTimeout: 20 * time.Second,
	})
}

func TestNoLibrary(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "libkrun.so.1")
	err := libkrun.Probe(missing)
	if !errors.Is(err, libkrun.ErrNoLibrary) || !strings.Contains(err.Error(), "install libkrun") {
		t.Fatalf("Probe(missing) = %v", err)
	}
	if !cgoEnabled {
		return
	}
	// Start reports it too, from the enter process, with the same fix.
	m := newMachine(t, missing, vmm.Config{Name: "nolib", Kernel: fakeKernel(t, "elf"), StateDir: stateDir(t)})
	err = m.Start(t.Context())
	if err == nil || !strings.Contains(err.Error(), "libkrun.so.1") || !strings.Contains(err.Error(), "install libkrun") {
		t.Fatalf("Start without the library = %v", err)
	}
	if m.State() != vmm.StateCrashed {
		t.Fatalf("state %s after a failed start", m.State())
	}
}

func TestOldLibrary(t *testing.T) {
	_, old := standIn(t)
	err := libkrun.Probe(old)
	if !errors.Is(err, libkrun.ErrTooOld) || !strings.Contains(err.Error(), "krun_add_vsock") || !strings.Contains(err.Error(), "newer libkrun") {
		t.Fatalf("Probe(old) = %v", err)
	}
}

// TestAvailableHere: with a loadable library, Available is decided by the host's
// real hardware KVM check (this host has none: vmx/svm absent).
func TestAvailableHere(t *testing.T) {
	lib, _ := standIn(t)
	t.Setenv(libkrun.LibraryEnv, lib)
	err := libkrun.Available()
	if vmm.DetectKVM().Usable {
		if err != nil {
			t.Fatalf("library and KVM present, Available = %v", err)
		}
		return
	}
	if !errors.Is(err, libkrun.ErrNoKVM) || errors.Is(err, libkrun.ErrNoLibrary) || !strings.Contains(err.Error(), "vmx/svm") {
		t.Fatalf("Available without hardware KVM = %v", err)
	}
	t.Setenv(libkrun.LibraryEnv, filepath.Join(t.TempDir(), "none.so"))
	if err := libkrun.Available(); !errors.Is(err, libkrun.ErrNoLibrary) || !errors.Is(err, libkrun.ErrNoKVM) {
		t.Fatalf("Available without library nor KVM = %v, want both reasons", err)
	}
}

func TestCallFailureNamesTheCall(t *testing.T) {
	lib, _ := standIn(t)
	t.Setenv("KRUN_STANDIN_FAIL", "krun_set_kernel")
	m := newMachine(t, lib, vmm.Config{Name: "fail", Kernel: fakeKernel(t, "elf"), StateDir: stateDir(t)})
	err := m.Start(t.Context())
	if err == nil || !strings.Contains(err.Error(), "krun_set_kernel") || !strings.Contains(err.Error(), "invalid argument") {
		t.Fatalf("Start with a failing krun_set_kernel = %v", err)
	}
}

func TestPlan(t *testing.T) {
	base := vmm.Config{Name: "p", StateDir: "/s", Kernel: fakeKernel(t, "arm64")}.WithDefaults()
	s, err := libkrun.Plan(base, "libkrun.so.1", 0)
	if err != nil || s.KernelFormat != libkrun.KernelFormatRaw || len(s.VsockPorts) != len(vmm.DefaultPorts) || s.VsockPorts[0].Path != "/s/vsock.sock_1024" {
		t.Fatalf("arm64 plan %+v, %v", s, err)
	}
	for name, mut := range map[string]func(*vmm.Config){
		"bzImage": func(c *vmm.Config) { c.Kernel = fakeKernel(t, "bzimage") },
		"missing": func(c *vmm.Config) { c.Kernel = "/nonexistent/vmlinux" },
		"VCPUs":   func(c *vmm.Config) { c.VCPUs = 300 },
	} {
		c := base
		mut(&c)
		if _, err := libkrun.Plan(c, "x", 0); err == nil {
			t.Errorf("%s: plan accepted", name)
		}
	}
	// Devices are refused at New: libkrun cannot pass them through.
	c := base
	c.PCIDevices = []string{"0000:01:00.0"}
	if _, err := libkrun.New(c, libkrun.WithEnterCommand("x")); err == nil || !strings.Contains(err.Error(), "PCIDevices") {
		t.Fatalf("New with a PCI device = %v", err)
	}
}
