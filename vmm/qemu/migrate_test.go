package qemu_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/internal/testenv"
	"github.com/openshell/openshell/vmm"
	"github.com/openshell/openshell/vmm/channel"
	"github.com/openshell/openshell/vmm/qemu"
)

// echoOnce dials the guest's echo port and checks one line comes back.
func echoOnce(t *testing.T, ctx context.Context, m *qemu.Machine, msg string) {
	t.Helper()
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := m.Host().Dial(dctx, echoPort)
	if err != nil {
		t.Fatalf("host→guest dial: %v\nconsole:\n%s", err, m.ConsoleTail(4096))
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		t.Fatal(err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != msg+"\n" {
		t.Fatalf("echo %q: got %q, %v\nconsole:\n%s", msg, got, err, m.ConsoleTail(4096))
	}
}

// bootServing starts m and waits for the test guest's answer on PortBootstrap; the
// returned conn is the guest's (it powers off when told "bye" or when it ends).
func bootServing(t *testing.T, ctx context.Context, m *qemu.Machine) io.ReadWriteCloser {
	t.Helper()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	ln, err := m.Host().Listen(channel.PortBootstrap)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	actx, cancel := context.WithTimeout(ctx, bootTimeout)
	defer cancel()
	c, err := channel.Accept(actx, ln)
	if err != nil {
		t.Fatalf("no answer from guest: %v\nconsole:\n%s", err, m.ConsoleTail(4096))
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetReadDeadline(time.Now().Add(bootTimeout))
	if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
		t.Fatalf("read answer: %v", err)
	}
	return c
}

// oldProgramEnded says whether the console shows the test guest's program noticing
// that its bootstrap session ended under it. Which of its two reports that is depends
// on timing: the host has read the answer when it lets go of the session, but the
// guest's write of that answer may not have returned yet ("send answer: session
// shutdown"); otherwise its wait for "bye" reads nothing.
func oldProgramEnded(console string) bool {
	return strings.Contains(console, `expected bye, got ""`) ||
		strings.Contains(console, "testinit: send answer: session shutdown")
}

// restoreConfig is cfg, the configuration of a saved machine, for a new machine
// called name that restores it from state (a state dir and console of its own).
func restoreConfig(t *testing.T, cfg vmm.Config, name, state string) vmm.Config {
	t.Helper()
	cfg.Name, cfg.StateDir, cfg.ConsoleLog, cfg.RestoreFrom = name, shortStateDir(t), "", state
	return cfg
}

// ranOnToPowerOff waits for restored machine r's guest to power off cleanly and
// checks that it went on from where it was saved (its console shows no new boot).
func ranOnToPowerOff(t *testing.T, ctx context.Context, r *qemu.Machine) {
	t.Helper()
	waitPowerOff(t, ctx, r)
	if strings.Contains(r.ConsoleTail(1<<16), "kernel modules loaded") {
		t.Fatalf("restored guest booted again instead of continuing:\n%s", r.ConsoleTail(4096))
	}
}

// TestSaveRestore saves a running guest (virtio-serial channel), ends its QEMU and
// restores it in a new one: the same guest program goes on (its connection to the old
// host end is gone, which it notices and reports on the console), the host can reach
// it again, and the restore is much faster than the boot.
func TestSaveRestore(t *testing.T) {
	for _, ramFile := range []bool{false, true} {
		name := "memfd"
		if ramFile {
			name = "ram-file"
		}
		t.Run(name, func(t *testing.T) { testSaveRestore(t, ramFile) })
	}
}

func testSaveRestore(t *testing.T, ramFile bool) {
	_, _, image := requireVM(t)
	ctx := t.Context()
	data := writableDisk(t)
	cfg := baseConfig(t, "save", vmm.Disk{Path: image, ReadOnly: true}, vmm.Disk{Path: data})
	if ramFile {
		// RAM stays in the file: the state file holds devices only.
		cfg.MemoryFile = filepath.Join(shortStateDir(t), "guest.ram")
	}
	m := newMachine(t, cfg, qemu.WithTransport(channel.TransportVirtioSerial))
	bootStart := time.Now()
	bootServing(t, ctx, m)
	echoOnce(t, ctx, m, "before-save")
	boot := time.Since(bootStart)

	state := filepath.Join(shortStateDir(t), "vm.state")
	saveStart := time.Now()
	if err := m.Save(ctx, state); err != nil {
		t.Fatalf("save: %v\nqemu log: %s", err, m.ConsoleTail(2048))
	}
	saveTook := time.Since(saveStart)
	if st, err := m.Status(ctx); err != nil || (st != "postmigrate" && st != "paused") {
		t.Fatalf("QEMU state after save = %q, %v; want paused (postmigrate)", st, err)
	}
	fi, err := os.Stat(state)
	switch {
	case err != nil:
		t.Fatalf("state file: %v", err)
	case !ramFile && fi.Size() < 1<<20:
		t.Fatalf("state file of %d bytes: want at least 1 MiB of guest memory", fi.Size())
	case ramFile && fi.Size() > 1<<20:
		t.Fatalf("state file of %d bytes with RAM in a file: want device state only (< 1 MiB)", fi.Size())
	}
	if _, err := os.Stat(state + ".part"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("partial state file left behind: %v", err)
	}
	_ = m.Kill()
	<-m.Exited()

	r := newMachine(t, restoreConfig(t, cfg, "restore", state), qemu.WithTransport(channel.TransportVirtioSerial))
	restoreStart := time.Now()
	if err := r.Start(ctx); err != nil {
		t.Fatalf("restore: %v", err)
	}
	if st, err := r.Status(ctx); err != nil || st != "paused" {
		t.Fatalf("restored QEMU state = %q, %v; want paused until Resume", st, err)
	}
	if err := r.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	// The program that answered at boot runs on: its bootstrap connection (to the old
	// host end) ends, it says so and returns, and init powers the guest off. (Its echo
	// server may be gone by the time the host could dial it.)
	// (Save lets the guest see its session end first: the line may be in the saved
	// machine's console already.)
	deadline := time.Now().Add(bootTimeout)
	for !oldProgramEnded(r.ConsoleTail(1<<16) + m.ConsoleTail(1<<16)) {
		if time.Now().After(deadline) {
			t.Fatalf("restored guest's console lacks the old program's end (a fresh boot?):\n%s", r.ConsoleTail(4096))
		}
		time.Sleep(5 * time.Millisecond)
	}
	restore := time.Since(restoreStart)
	t.Logf("boot→echo %s; save %s (%d KiB file); restore→guest running %s (%.2f× the boot)",
		boot.Round(time.Millisecond), saveTook.Round(time.Millisecond), fi.Size()>>10, restore.Round(time.Millisecond), restore.Seconds()/boot.Seconds())
	ranOnToPowerOff(t, ctx, r)
	if ramFile {
		// A guest that ends without being saved gives its RAM file back.
		if _, err := os.Stat(cfg.MemoryFile); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("RAM file of a machine that powered off is still there: %v", err)
		}
	}
	if restore > boot {
		t.Fatalf("restore→echo %s is slower than boot→echo %s", restore, boot)
	}
}

// TestSaveThenContinue saves a guest and lets the same QEMU go on (a snapshot of a
// running machine): the guest saw its channel session end (the host end let go
// before the save, as a restored copy needs) and runs on after Resume to a clean
// power-off.
func TestSaveThenContinue(t *testing.T) {
	_, _, image := requireVM(t)
	ctx := t.Context()
	cfg := baseConfig(t, "savecont", vmm.Disk{Path: image, ReadOnly: true}, vmm.Disk{Path: writableDisk(t)})
	m := newMachine(t, cfg, qemu.WithTransport(channel.TransportVirtioSerial))
	bootServing(t, ctx, m)
	state := filepath.Join(shortStateDir(t), "vm.state")
	if err := m.Save(ctx, state); err != nil {
		t.Fatal(err)
	}
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(bootTimeout)
	for !oldProgramEnded(m.ConsoleTail(1 << 16)) {
		if time.Now().After(deadline) {
			t.Fatalf("guest did not run on after Resume:\n%s", m.ConsoleTail(4096))
		}
		time.Sleep(10 * time.Millisecond)
	}
	waitPowerOff(t, ctx, m)
}

// TestSaveRefused: what QEMU cannot migrate is refused before the guest is touched,
// naming the device and the fix; a bad path is refused too.
func TestSaveRefused(t *testing.T) {
	_, _, image := requireVM(t)
	_, err := channel.FindVsockBackend()
	testenv.Require(t, err == nil, fmt.Sprint(err))
	ctx := t.Context()
	cfg := baseConfig(t, "nosave", vmm.Disk{Path: image, ReadOnly: true}, vmm.Disk{Path: writableDisk(t)})
	m := newMachine(t, cfg, qemu.WithTransport(channel.TransportVhostUserVsock))
	bootServing(t, ctx, m)
	err = m.Save(ctx, filepath.Join(shortStateDir(t), "vm.state"))
	if !errors.Is(err, vmm.ErrCannotSave) || !strings.Contains(err.Error(), "virtio-serial") {
		t.Fatalf("save over vhost-user-vsock: %v; want ErrCannotSave naming virtio-serial", err)
	}
	if st, err := m.Status(ctx); err != nil || st != "running" {
		t.Fatalf("guest state after a refused save = %q, %v; want running", st, err)
	}
	if err := m.Save(ctx, "relative/vm.state"); err == nil || !strings.Contains(err.Error(), "absolute") {
		t.Fatalf("relative path: %v", err)
	}
	// A restore from a file that is not there is refused at Start, naming the field.
	r := newMachine(t, restoreConfig(t, cfg, cfg.Name, filepath.Join(t.TempDir(), "missing.state")), qemu.WithTransport(channel.TransportVirtioSerial))
	if err := r.Start(ctx); err == nil || !strings.Contains(err.Error(), "RestoreFrom") {
		t.Fatalf("restore from a missing file: %v", err)
	}
}

// TestRestoreUnrecordedCPU: a machine saved before its CPU model was recorded ran
// with QEMU's default x86 model; restored with CPUUnrecorded it gets that model back
// (not the RDRAND one new boots get) and the guest runs on to a clean power-off.
func TestRestoreUnrecordedCPU(t *testing.T) {
	_, _, image := requireVM(t)
	ctx := t.Context()
	cfg := baseConfig(t, "oldcpu", vmm.Disk{Path: image, ReadOnly: true}, vmm.Disk{Path: writableDisk(t)})
	cfg.MemoryFile = filepath.Join(shortStateDir(t), "guest.ram")
	m := newMachine(t, cfg, qemu.WithTransport(channel.TransportVirtioSerial), qemu.WithAccel(qemu.AccelTCG), qemu.WithCPU("qemu64"))
	bootServing(t, ctx, m)
	if got := m.CPU(); got != "qemu64" {
		t.Fatalf("CPU() = %q; want the model given (qemu64)", got)
	}
	state := filepath.Join(shortStateDir(t), "vm.state")
	if err := m.Save(ctx, state); err != nil {
		t.Fatalf("save: %v", err)
	}
	_ = m.Kill()
	<-m.Exited()
	r := newMachine(t, restoreConfig(t, cfg, "oldcpu-restore", state), qemu.WithTransport(channel.TransportVirtioSerial), qemu.WithAccel(qemu.AccelTCG), qemu.WithCPU(qemu.CPUUnrecorded))
	if err := r.Start(ctx); err != nil {
		t.Fatalf("restore with the unrecorded model: %v", err)
	}
	if got := r.CPU(); got != "qemu64" {
		t.Fatalf("restored CPU() = %q; want qemu64 (the model before it was recorded)", got)
	}
	if err := r.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	ranOnToPowerOff(t, ctx, r)
}

// TestCPUModelRefused: a model that is not a plain QEMU model string is refused
// naming the option.
func TestCPUModelRefused(t *testing.T) {
	cfg := vmm.Config{Name: "x", VCPUs: 1, MemoryMiB: 64, Kernel: "/k", StateDir: t.TempDir()}
	for _, bad := range []string{"qemu64 -device x", "host\n", "a;b"} {
		if _, err := qemu.New(cfg, qemu.WithCPU(bad)); err == nil || !strings.Contains(err.Error(), "cpu model") {
			t.Errorf("WithCPU(%q): %v; want an error naming the cpu model", bad, err)
		}
	}
}
