package vmmtest_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/openshell/openshell/vmm"
	"github.com/openshell/openshell/vmm/channel"
	"github.com/openshell/openshell/vmm/vmmtest"
)

// standIn is a stand-in VMM for the suite's own tests: its "VMM" is this test binary
// re-executed as a child (TestStandInGuest), which plays the guest over a host Unix
// socket. Booting real guests is what the backends' conformance tests do; this one
// shows the suite passes a correct machine and fails broken ones, in seconds.
type standIn struct {
	name   string
	dir    string
	fault  string
	host   *channel.Host
	mu     sync.Mutex
	state  vmm.State
	cmd    *exec.Cmd
	exited chan struct{}
	err    error
	asked  bool
}

var _ vmm.Machine = (*standIn)(nil)

func newStandIn(t *testing.T, name, fault string) vmm.Machine {
	dir, err := os.MkdirTemp("", "vmmtest-")
	if err != nil {
		t.Fatal(err)
	}
	m := &standIn{name: name, dir: dir, fault: fault, state: vmm.StateCreated, exited: make(chan struct{}),
		host: channel.NewUnixPorts(filepath.Join(dir, "vsock.sock"))}
	t.Cleanup(func() {
		m.mu.Lock()
		cmd := m.cmd
		m.mu.Unlock()
		if cmd != nil {
			_ = cmd.Process.Kill()
			<-m.exited
		}
		_ = os.RemoveAll(dir)
	})
	return m
}

func (m *standIn) Start(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state != vmm.StateCreated && m.fault != "restartable" {
		return errors.New("started once")
	}
	if m.cmd != nil {
		return nil // "restartable": claims success without a VMM
	}
	sock := channel.UnixPortPath(filepath.Join(m.dir, "vsock.sock"), channel.PortBootstrap)
	if m.fault == "never-dials" {
		sock = filepath.Join(m.dir, "nowhere.sock")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestStandInGuest$", "-test.v=false")
	cmd.Env = append(os.Environ(), "VMMTEST_STANDIN_SOCK="+sock)
	if err := cmd.Start(); err != nil {
		return err
	}
	m.cmd, m.state = cmd, vmm.StateRunning
	go func() {
		err := cmd.Wait()
		m.mu.Lock()
		m.err = err
		switch {
		case m.fault == "crash-looks-clean":
			m.state, m.err = vmm.StateStopped, nil
		case err != nil && !m.asked:
			m.state = vmm.StateCrashed
		default:
			m.state = vmm.StateStopped
		}
		m.mu.Unlock()
		close(m.exited)
	}()
	return nil
}

func (m *standIn) Stop(ctx context.Context) error {
	m.mu.Lock()
	m.asked = true
	cmd := m.cmd
	if m.fault == "stop-leaves-vmm" {
		m.state = vmm.StateStopped
		m.mu.Unlock()
		return nil
	}
	m.mu.Unlock()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.exited:
		return nil
	case <-ctx.Done():
		return m.Kill()
	}
}

func (m *standIn) Kill() error {
	m.mu.Lock()
	m.asked = true
	cmd := m.cmd
	m.mu.Unlock()
	if m.fault == "kill-noop" || cmd == nil {
		return nil
	}
	return cmd.Process.Kill()
}

func (m *standIn) Wait(ctx context.Context) error {
	if m.fault == "wait-ignores-ctx" {
		<-m.exited
	}
	select {
	case <-m.exited:
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.state == vmm.StateCrashed {
			return m.err
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *standIn) State() vmm.State {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state
}

func (m *standIn) PID() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return 0
	}
	if m.fault == "pid-is-caller" {
		return os.Getpid()
	}
	return m.cmd.Process.Pid
}

func (m *standIn) Host() *channel.Host { return m.host }

func standInHarness(fault string) vmmtest.Harness {
	f := vmm.Features{Backend: "stand-in", Transports: []string{channel.TransportUnixPorts}, ChildProcess: true, GracefulStop: true}
	f.HostDial = fault == "claims-host-dial" // its unix-ports channel cannot dial the guest
	return vmmtest.Harness{
		Features:    f,
		New:         func(t *testing.T, name string) vmm.Machine { return newStandIn(t, name, fault) },
		BootTimeout: 5 * time.Second,
	}
}

// TestStandInGuest is the stand-in guest (run only as the stand-in's child): dial
// the host, say hello, exit 0 on "bye" or SIGTERM.
func TestStandInGuest(t *testing.T) {
	sock := os.Getenv("VMMTEST_STANDIN_SOCK")
	if sock == "" {
		t.Skip("only run as the stand-in VMM's child")
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	go func() { <-term; os.Exit(0) }()
	var c net.Conn
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if c, err = net.Dial("unix", sock); err == nil {
			break
		}
	}
	if err != nil {
		select {} // never dials: run until killed
	}
	fmt.Fprintln(c, "hello from the stand-in guest")
	line, _ := bufio.NewReader(c).ReadString('\n')
	if strings.TrimSpace(line) == "bye" {
		os.Exit(0)
	}
	select {}
}

func TestStandInPassesSuite(t *testing.T) {
	vmmtest.Run(t, standInHarness(""))
}

// TestBrokenBackendHelper runs the suite on a broken stand-in in a child process of
// TestSuiteCatchesBrokenBackends; it must fail there.
func TestBrokenBackendHelper(t *testing.T) {
	fault := os.Getenv("VMMTEST_FAULT")
	if fault == "" {
		t.Skip("only run as a child of TestSuiteCatchesBrokenBackends")
	}
	vmmtest.Run(t, standInHarness(fault))
}

// TestSuiteCatchesBrokenBackends: each deliberate contract violation must fail the
// suite, in the case that checks it.
func TestSuiteCatchesBrokenBackends(t *testing.T) {
	for fault, failingCase := range map[string]string{
		"never-dials":       "BootChannelPowerOff",
		"crash-looks-clean": "CrashDetected",
		"stop-leaves-vmm":   "Stop",
		"kill-noop":         "KillAndAdoptByPID",
		"pid-is-caller":     "KillAndAdoptByPID",
		"restartable":       "BootChannelPowerOff",
		"wait-ignores-ctx":  "BootChannelPowerOff",
		"claims-host-dial":  "BootChannelPowerOff",
	} {
		t.Run(fault, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestBrokenBackendHelper$", "-test.v")
			cmd.Env = append(os.Environ(), "VMMTEST_FAULT="+fault)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("the suite passed a backend with fault %q:\n%s", fault, out)
			}
			if want := "--- FAIL: TestBrokenBackendHelper/" + failingCase; !strings.Contains(string(out), want) {
				t.Fatalf("fault %q: want %q in the output:\n%s", fault, want, out)
			}
		})
	}
}
