// Package vmmtest is the conformance suite every vmm backend runs where it can run:
// boot, channel up, power-off, stop, kill, wait, crash detection and re-adoption by
// PID. A backend's test supplies a Harness whose machines boot a guest speaking the
// suite's small protocol (GuestProtocol).
package vmmtest

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/openshell/openshell/internal/procstat"
	"github.com/openshell/openshell/vmm"
	"github.com/openshell/openshell/vmm/channel"
)

// GuestProtocol is what the guest of a Harness machine must do: dial the host on
// channel.PortBootstrap, send one line, then power off cleanly when it reads "bye"
// or when the backend asks it to stop. Where the backend lets the host dial the
// guest (Features.HostDial), the guest also echoes lines on EchoPort.
const GuestProtocol = "dial PortBootstrap, send a line, power off on bye or stop; echo on EchoPort"

// EchoPort is where the guest echoes lines for host→guest dials.
const EchoPort uint32 = 1030

// Harness builds machines of one backend.
type Harness struct {
	// Features are the backend's (vmm.Features); the suite skips what it lacks.
	Features vmm.Features
	// New returns an unstarted machine whose guest speaks GuestProtocol; name is
	// unique per case. It registers its own cleanup (kill, wait).
	New func(t *testing.T, name string) vmm.Machine
	// BootTimeout bounds boot to channel up and a guest power-off (default 60s).
	BootTimeout time.Duration
}

// Run runs the suite.
func Run(t *testing.T, h Harness) {
	if h.BootTimeout == 0 {
		h.BootTimeout = 60 * time.Second
	}
	t.Run("BootChannelPowerOff", func(t *testing.T) { bootChannelPowerOff(t, h) })
	t.Run("Stop", func(t *testing.T) { stop(t, h) })
	t.Run("KillAndAdoptByPID", func(t *testing.T) { killAndAdopt(t, h) })
	t.Run("CrashDetected", func(t *testing.T) { crash(t, h) })
}

// up starts m and waits for the guest's line on PortBootstrap; it returns the
// guest's connection (the caller closes it).
func up(t *testing.T, h Harness, m vmm.Machine) io.ReadWriteCloser {
	t.Helper()
	if err := m.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if st := m.State(); st != vmm.StateRunning {
		t.Fatalf("state after Start = %s, want running", st)
	}
	if m.PID() <= 0 {
		t.Fatalf("PID after Start = %d", m.PID())
	}
	host := m.Host()
	if host == nil {
		t.Fatal("Host() is nil after Start")
	}
	ln, err := host.Listen(channel.PortBootstrap)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(t.Context(), h.BootTimeout)
	defer cancel()
	c, err := channel.Accept(ctx, ln)
	if err != nil {
		t.Fatalf("the guest did not dial the host within %s: %v", h.BootTimeout, err)
	}
	_ = c.SetReadDeadline(time.Now().Add(h.BootTimeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || strings.TrimSpace(line) == "" {
		c.Close()
		t.Fatalf("the guest's first line: %q, %v", line, err)
	}
	_ = c.SetReadDeadline(time.Time{})
	return c
}

// waitBounded calls m.Wait(ctx) and fails the test if Wait outlives ctx by more
// than a second (a Wait that ignores its context would hang the caller).
func waitBounded(t *testing.T, m vmm.Machine, ctx context.Context) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- m.Wait(ctx) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	select {
	case err := <-done:
		return err
	case <-time.After(time.Second):
		t.Fatal("Wait did not return within 1s of its context ending")
		return nil
	}
}

// checkHostDial: a backend that lets the host dial the guest carries an echo both
// ways; one that does not must say so at once, not hang.
func checkHostDial(t *testing.T, h Harness, m vmm.Machine) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	ec, err := m.Host().Dial(ctx, EchoPort)
	if !h.Features.HostDial {
		if err == nil {
			ec.Close()
			t.Fatal("Dial succeeded on a backend whose Features say the host cannot dial the guest")
		}
		if ctx.Err() != nil {
			t.Fatalf("Dial on a backend without host dial waited for its context: %v", err)
		}
		return
	}
	if err != nil {
		t.Fatalf("host→guest Dial(%d): %v", EchoPort, err)
	}
	defer ec.Close()
	_ = ec.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(ec, "ping\n"); err != nil {
		t.Fatal(err)
	}
	if got, err := bufio.NewReader(ec).ReadString('\n'); err != nil || got != "ping\n" {
		t.Fatalf("echo over a host→guest dial: %q, %v", got, err)
	}
}

func waitExit(t *testing.T, h Harness, m vmm.Machine) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), h.BootTimeout)
	defer cancel()
	err := waitBounded(t, m, ctx)
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
		t.Fatalf("Wait: the VMM did not exit within %s", h.BootTimeout)
	}
	return err
}

func bootChannelPowerOff(t *testing.T, h Harness) {
	m := h.New(t, "poweroff")
	c := up(t, h, m)
	defer c.Close()
	// Wait honours its context while the machine runs.
	short, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	err := waitBounded(t, m, short)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait with an expiring context while running = %v, want DeadlineExceeded", err)
	}
	checkHostDial(t, h, m)
	pid, start := m.PID(), procStart(m.PID())
	if _, err := io.WriteString(c, "bye\n"); err != nil {
		t.Fatal(err)
	}
	if err := waitExit(t, h, m); err != nil {
		t.Fatalf("Wait after the guest powered off = %v, want nil", err)
	}
	if st := m.State(); st != vmm.StateStopped {
		t.Fatalf("state after guest power-off = %s, want stopped", st)
	}
	if h.Features.ChildProcess {
		requireGone(t, pid, start)
	}
	if err := m.Start(t.Context()); err == nil {
		t.Fatal("a second Start succeeded; a machine starts once")
	}
}

func stop(t *testing.T, h Harness) {
	m := h.New(t, "stop")
	c := up(t, h, m)
	defer c.Close()
	pid, start := m.PID(), procStart(m.PID())
	ctx, cancel := context.WithTimeout(t.Context(), h.BootTimeout)
	defer cancel()
	if err := m.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if st := m.State(); st != vmm.StateStopped {
		t.Fatalf("state after Stop = %s, want stopped", st)
	}
	if err := waitExit(t, h, m); err != nil {
		t.Fatalf("Wait after Stop = %v, want nil (a stop is not a crash)", err)
	}
	if h.Features.ChildProcess {
		requireGone(t, pid, start)
	}
}

func killAndAdopt(t *testing.T, h Harness) {
	m := h.New(t, "kill")
	c := up(t, h, m)
	defer c.Close()
	pid := m.PID()
	if h.Features.ChildProcess {
		// What a restarted runner does: find the VMM by the recorded pid and start
		// time, and know it for the same process.
		if pid == os.Getpid() {
			t.Fatalf("PID %d is the caller's own, but the backend says the VMM is a child process", pid)
		}
		start := procStart(pid)
		if start == 0 || !sameProcess(pid, start) {
			t.Fatalf("VMM pid %d cannot be re-adopted: no /proc identity (start %d)", pid, start)
		}
		defer requireGone(t, pid, start)
	}
	if err := m.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := waitBounded(t, m, ctx); errors.Is(err, context.DeadlineExceeded) {
		t.Fatal("Wait did not return within 10s of Kill")
	}
	if st := m.State(); st == vmm.StateRunning {
		t.Fatal("state after Kill is still running")
	}
}

func crash(t *testing.T, h Harness) {
	if !h.Features.ChildProcess {
		t.Skip("the VMM runs in the caller's process: nothing to kill from outside")
	}
	m := h.New(t, "crash")
	c := up(t, h, m)
	defer c.Close()
	pid, start := m.PID(), procStart(m.PID())
	if pid == os.Getpid() || pid <= 0 {
		t.Fatalf("VMM pid %d: not a child process to crash", pid)
	}
	// A crash: the VMM dies without anyone asking the machine.
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := waitExit(t, h, m)
	if err == nil {
		t.Fatal("Wait after the VMM was killed from outside = nil, want the crash")
	}
	if st := m.State(); st != vmm.StateCrashed {
		t.Fatalf("state after the VMM died = %s, want crashed", st)
	}
	requireGone(t, pid, start)
}

// procStart is /proc/<pid>/stat's starttime (clock ticks since boot), 0 if unknown.
func procStart(pid int) uint64 {
	st, err := procstat.Read(pid)
	if err != nil {
		return 0
	}
	return st.StartTime
}

func sameProcess(pid int, start uint64) bool {
	return pid > 0 && start != 0 && procStart(pid) == start
}

func requireGone(t *testing.T, pid int, start uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for sameProcess(pid, start) {
		if time.Now().After(deadline) {
			t.Fatalf("VMM pid %d still alive after the machine exited", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
