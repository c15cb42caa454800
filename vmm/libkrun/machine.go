package libkrun

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/openshell/openshell/vmm"
	"github.com/openshell/openshell/vmm/channel"
)

// Files inside the state dir.
const (
	specName    = "libkrun.json"
	enteredName = "libkrun.entered"
	logName     = "libkrun.log"
	pidName     = "libkrun.pid"
)

// Option configures New.
type Option func(*options)

type options struct {
	enter        []string
	library      string
	logLevel     uint32
	log          *slog.Logger
	startTimeout time.Duration
}

// WithEnterCommand is argv of the process that calls Enter; the spec path is
// appended. The runner passes its own executable with its enter subcommand.
func WithEnterCommand(argv ...string) Option {
	return func(o *options) { o.enter = append([]string(nil), argv...) }
}

// WithLibrary sets the library path or soname (default Library()).
func WithLibrary(path string) Option { return func(o *options) { o.library = path } }

// WithLogLevel sets libkrun's log level (0 off .. 5 trace).
func WithLogLevel(l uint32) Option { return func(o *options) { o.logLevel = l } }

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithStartTimeout bounds how long Start waits for the enter process (default 15s).
func WithStartTimeout(d time.Duration) Option { return func(o *options) { o.startTimeout = d } }

// Features of the libkrun backend.
func Features() vmm.Features {
	return vmm.Features{
		Backend:      "libkrun",
		Transports:   []string{channel.TransportUnixPorts},
		SharedDirs:   true,
		ChildProcess: true,
		// libkrun's C API has no save/restore: suspend and snapshots are refused.
		Snapshots: false,
	}
}

// Machine is one libkrun VM in its enter process.
type Machine struct {
	cfg  vmm.Config
	opts options
	log  *slog.Logger
	host *channel.Host

	mu       sync.Mutex
	state    vmm.State
	cmd      *exec.Cmd
	exited   chan struct{}
	exitErr  error
	stopping bool
}

var _ vmm.Machine = (*Machine)(nil)

// New validates cfg and returns an unstarted machine.
func New(cfg vmm.Config, opts ...Option) (vmm.Machine, error) { return NewMachine(cfg, opts...) }

// NewMachine is New returning the concrete type.
func NewMachine(cfg vmm.Config, opts ...Option) (*Machine, error) {
	o := options{library: Library(), startTimeout: 15 * time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	if o.log == nil {
		o.log = slog.Default()
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.CheckFeatures(Features()); err != nil {
		return nil, err
	}
	if len(o.enter) == 0 {
		return nil, fmt.Errorf("vm %s: libkrun needs an enter command (WithEnterCommand): krun_start_enter takes over the process that calls it", cfg.Name)
	}
	return &Machine{
		cfg: cfg, opts: o, state: vmm.StateCreated, exited: make(chan struct{}),
		log:  o.log.With("vm", cfg.Name, "vmm", "libkrun"),
		host: channel.NewUnixPorts(statePath(cfg, vsockPrefix)),
	}, nil
}

func statePath(cfg vmm.Config, name string) string { return filepath.Join(cfg.StateDir, name) }

// Start writes the enter spec, starts the enter process and returns once it is
// about to enter the VM (or the reason it will not).
func (m *Machine) Start(ctx context.Context) (retErr error) {
	m.mu.Lock()
	if m.state != vmm.StateCreated {
		st := m.state
		m.mu.Unlock()
		return fmt.Errorf("vm %s: Start in state %s: a machine starts once; create a new one", m.cfg.Name, st)
	}
	m.state = vmm.StateRunning
	m.mu.Unlock()
	defer func() {
		if retErr != nil {
			m.mu.Lock()
			if m.cmd == nil {
				m.state = vmm.StateCrashed
				m.exitErr = retErr
				close(m.exited)
			}
			m.mu.Unlock()
		}
	}()
	cfg := m.cfg
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("vm %s: state dir: %w", cfg.Name, err)
	}
	spec, err := Plan(cfg, m.opts.library, m.opts.logLevel)
	if err != nil {
		return err
	}
	for i, d := range cfg.Disks {
		if _, err := os.Stat(d.Path); err != nil {
			return fmt.Errorf("vm %s: Disks[%d]: %w", cfg.Name, i, err)
		}
	}
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return err
	}
	specPath := statePath(cfg, specName)
	if err := os.WriteFile(specPath, b, 0o600); err != nil {
		return fmt.Errorf("vm %s: %w", cfg.Name, err)
	}
	_ = os.Remove(spec.EnteredFile)
	logf, err := os.OpenFile(statePath(cfg, logName), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("vm %s: %w", cfg.Name, err)
	}
	defer logf.Close()
	argv := append(append([]string(nil), m.opts.enter...), specPath)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group: a Ctrl-C in the runner's terminal must not kill guests.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("vm %s: start libkrun enter process %s: %w", cfg.Name, argv[0], err)
	}
	m.mu.Lock()
	m.cmd = cmd
	m.mu.Unlock()
	_ = os.WriteFile(statePath(cfg, pidName), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600)
	go m.reap()
	m.log.Info("starting vm", "library", m.opts.library, "pid", cmd.Process.Pid)

	wctx, cancel := context.WithTimeout(ctx, m.opts.startTimeout)
	defer cancel()
	for {
		if _, err := os.Stat(spec.EnteredFile); err == nil {
			return nil
		}
		select {
		case <-m.exited:
			m.mu.Lock()
			m.state = vmm.StateCrashed
			m.mu.Unlock()
			return fmt.Errorf("vm %s: libkrun enter process exited at start (%v): %s", cfg.Name, m.exitErr, tail(statePath(cfg, logName), 4096))
		case <-wctx.Done():
			_ = m.Kill()
			<-m.exited
			m.mu.Lock()
			m.state = vmm.StateCrashed
			m.mu.Unlock()
			return fmt.Errorf("vm %s: libkrun enter process did not enter the VM: %w: %s", cfg.Name, wctx.Err(), tail(statePath(cfg, logName), 4096))
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (m *Machine) reap() {
	err := m.cmd.Wait()
	m.mu.Lock()
	m.exitErr = err
	if err != nil && !m.stopping {
		m.state = vmm.StateCrashed
	} else {
		m.state = vmm.StateStopped
	}
	m.mu.Unlock()
	_ = m.host.Close()
	_ = os.Remove(statePath(m.cfg, pidName))
	close(m.exited)
	m.log.Info("vm exited", "err", err)
}

// Stop sends SIGTERM to the enter process (libkrun has no guest power button the
// host can press), waits until ctx is done (10s without a deadline), then kills it.
func (m *Machine) Stop(ctx context.Context) error {
	m.mu.Lock()
	cmd := m.cmd
	if cmd == nil {
		m.mu.Unlock()
		return nil
	}
	m.stopping = true
	m.mu.Unlock()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.exited:
		return nil
	case <-ctx.Done():
	}
	return m.Kill()
}

// Kill kills the enter process (and so the VM) at once.
func (m *Machine) Kill() error {
	m.mu.Lock()
	cmd := m.cmd
	m.stopping = true
	m.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return nil
	}
	if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("vm %s: kill pid %d: %w", m.cfg.Name, cmd.Process.Pid, err)
	}
	return nil
}

// Wait blocks until the enter process exits; nil for a clean guest shutdown or an
// exit the caller asked for.
func (m *Machine) Wait(ctx context.Context) error {
	select {
	case <-m.exited:
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.exitErr != nil && m.state == vmm.StateCrashed {
			return fmt.Errorf("vm %s: libkrun: %w", m.cfg.Name, m.exitErr)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Exited is closed when the enter process has exited.
func (m *Machine) Exited() <-chan struct{} { return m.exited }

// State of the machine.
func (m *Machine) State() vmm.State {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state
}

// PID of the enter process (the VMM), 0 before Start.
func (m *Machine) PID() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil || m.cmd.Process == nil {
		return 0
	}
	return m.cmd.Process.Pid
}

// Host is the host end: one Unix socket per guest port (valid before Start, so
// the runner listens before the guest can dial).
func (m *Machine) Host() *channel.Host { return m.host }

// ConsoleTail returns up to n trailing bytes of the guest console.
func (m *Machine) ConsoleTail(n int) string { return tail(m.cfg.ConsoleLog, n) }

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return "(empty)"
	}
	return string(b)
}
