// Package qemu runs microVMs with QEMU: microvm machine type (q35 when PCI devices are
// passed through), KVM when the CPU really virtualises and TCG otherwise, QMP for
// status and shutdown, and the host end of the guest channel over vhost-vsock, a
// vhost-user vsock backend process (vhost-device-vsock) or virtio-serial.
package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"

	"github.com/openshell/openshell/vmm"
	"github.com/openshell/openshell/vmm/channel"
)

// DefaultBinary is the QEMU system emulator for x86_64 guests; arm64 guests (an arm64
// Image as the kernel) get DefaultBinaryARM64, unless WithBinary says otherwise.
const (
	DefaultBinary      = "qemu-system-x86_64"
	DefaultBinaryARM64 = "qemu-system-aarch64"
)

// VirtiofsdPath is where Debian's qemu-system-common ships virtiofsd.
const VirtiofsdPath = "/usr/lib/qemu/virtiofsd"

type options struct {
	accel        string
	transport    string
	binary       string
	vsockBackend string
	virtiofsd    string
	extraArgs    []string
	log          *slog.Logger
	startTimeout time.Duration
	forceQ35     bool
	cpu          string
}

// Option configures New.
type Option func(*options)

// WithAccel sets the accelerator: "auto" (default: KVM when the CPU really
// virtualises, else TCG), "kvm" or "tcg".
func WithAccel(name string) Option { return func(o *options) { o.accel = name } }

// WithTransport sets the channel's host end: "auto" (default), "vhost-vsock",
// "vhost-user-vsock" or "virtio-serial" (names from vmm/channel).
func WithTransport(name string) Option { return func(o *options) { o.transport = name } }

// WithBinary sets the QEMU binary (name on PATH or path).
func WithBinary(path string) Option { return func(o *options) { o.binary = path } }

// WithVsockBackend sets the vhost-device-vsock binary.
func WithVsockBackend(path string) Option { return func(o *options) { o.vsockBackend = path } }

// WithVirtiofsd sets the virtiofsd binary.
func WithVirtiofsd(path string) Option { return func(o *options) { o.virtiofsd = path } }

// WithExtraArgs appends raw QEMU arguments (debugging, tests).
func WithExtraArgs(args ...string) Option {
	return func(o *options) { o.extraArgs = append(o.extraArgs, args...) }
}

// WithCPU sets the guest CPU model (-cpu), as recorded with a saved machine (CPU):
// a restored guest must get the model it was saved with. "" = the default for the
// accelerator and architecture; CPUUnrecorded = the default of machines saved before
// the model was recorded with their state.
func WithCPU(model string) Option { return func(o *options) { o.cpu = model } }

// CPUUnrecorded asks WithCPU for the model machines ran with before their saved state
// recorded it (x86_64 TCG guests had QEMU's default qemu64, without RDRAND).
const CPUUnrecorded = "unrecorded"

// CPU is the guest CPU model in use (after Start): record it with saved state.
func (m *Machine) CPU() string { m.mu.Lock(); defer m.mu.Unlock(); return m.plan.cpu }

// WithQ35 uses the q35 machine type (PCI devices) even without passthrough devices.
func WithQ35() Option { return func(o *options) { o.forceQ35 = true } }

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithStartTimeout bounds how long Start waits for QEMU's QMP socket (default 15s).
func WithStartTimeout(d time.Duration) Option { return func(o *options) { o.startTimeout = d } }

// Machine is a QEMU microVM.
type Machine struct {
	cfg  vmm.Config
	opts options
	log  *slog.Logger

	mu        sync.Mutex
	state     vmm.State
	plan      plan
	cmd       *exec.Cmd
	helpers   []*exec.Cmd // vsock backend, virtiofsd: killed when QEMU exits
	host      *channel.Host
	exited    chan struct{}
	exitErr   error
	stopping  bool
	accelInfo AccelInfo
	transport TransportInfo
	saved     bool // the guest's state is saved (Save) and not resumed: keep MemoryFile
}

var _ vmm.Machine = (*Machine)(nil)

// New validates cfg and returns an unstarted machine.
func New(cfg vmm.Config, opts ...Option) (vmm.Machine, error) {
	return NewMachine(cfg, opts...)
}

// NewMachine is New returning the concrete type (for Accel/Transport/QMP helpers).
func NewMachine(cfg vmm.Config, opts ...Option) (*Machine, error) {
	o := options{accel: AccelAuto, transport: TransportAuto, virtiofsd: VirtiofsdPath, startTimeout: 15 * time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	switch o.accel {
	case "", AccelAuto, AccelKVM, AccelTCG:
	default:
		return nil, fmt.Errorf("vm %s: qemu accel %q: use auto, kvm or tcg", cfg.Name, o.accel)
	}
	switch o.transport {
	case "", TransportAuto, channel.TransportVhostVsock, channel.TransportVhostUserVsock, channel.TransportVirtioSerial:
	default:
		return nil, fmt.Errorf("vm %s: qemu transport %q: use auto, vhost-vsock, vhost-user-vsock or virtio-serial", cfg.Name, o.transport)
	}
	if strings.Trim(o.cpu, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789,+-=_.") != "" {
		return nil, fmt.Errorf("vm %s: qemu cpu model %q: letters, digits and , + - = _ . only (as recorded with the saved machine; empty for the default)", cfg.Name, o.cpu)
	}
	if o.accel == "" {
		o.accel = AccelAuto
	}
	if o.transport == "" {
		o.transport = TransportAuto
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
	return &Machine{cfg: cfg, opts: o, log: o.log.With("vm", cfg.Name, "vmm", "qemu"), state: vmm.StateCreated, exited: make(chan struct{})}, nil
}

// Config returns the machine's config with defaults filled.
func (m *Machine) Config() vmm.Config { return m.cfg }

// Accel is the accelerator in use (after Start).
func (m *Machine) Accel() AccelInfo { m.mu.Lock(); defer m.mu.Unlock(); return m.accelInfo }

// Transport is the channel transport in use (after Start).
func (m *Machine) Transport() TransportInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.transport
}

func machineName(p plan) string {
	switch {
	case p.arm64:
		return "virt (arm64)"
	case p.q35:
		return "q35"
	}
	return "microvm"
}

// binary is the QEMU system emulator for the guest's architecture.
func (m *Machine) binary() string {
	switch {
	case m.opts.binary != "":
		return m.opts.binary
	case isARM64Image(m.cfg.Kernel):
		return DefaultBinaryARM64
	}
	return DefaultBinary
}

// isARM64Image reports whether the kernel is an arm64 Image ("ARM\x64" at offset 56).
func isARM64Image(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	hdr := make([]byte, 64)
	if _, err := io.ReadFull(f, hdr); err != nil {
		return false
	}
	return string(hdr[56:60]) == "ARM\x64"
}

// Args returns the QEMU command line Start would run (for diagnostics).
func (m *Machine) Args() ([]string, error) {
	p, _, _, err := m.resolve()
	if err != nil {
		return nil, err
	}
	return append(append(buildArgs(m.cfg, p), restoreArgs(m.cfg)...), m.opts.extraArgs...), nil
}

func (m *Machine) resolve() (plan, AccelInfo, TransportInfo, error) {
	cfg := m.cfg
	arm64 := isARM64Image(cfg.Kernel)
	if arm64 && (len(cfg.PCIDevices) > 0 || m.opts.forceQ35) {
		return plan{}, AccelInfo{}, TransportInfo{}, fmt.Errorf("vm %s: PCIDevices: device passthrough needs an x86_64 guest (the kernel is an arm64 Image)", cfg.Name)
	}
	p := plan{
		arm64:      arm64,
		q35:        len(cfg.PCIDevices) > 0 || m.opts.forceQ35,
		qmpSock:    statePath(cfg, qmpSockName),
		vhostUser:  statePath(cfg, vhostUserName),
		serialSock: statePath(cfg, serialSockName),
		cpuKHz:     HostCPUKHz(),
	}
	var ai AccelInfo
	switch m.opts.accel {
	case AccelAuto:
		ai = DetectAccel()
	case AccelKVM:
		ai = AccelInfo{Name: AccelKVM, Reason: "requested"}
	default:
		ai = AccelInfo{Name: AccelTCG, Reason: "requested"}
	}
	p.accel = ai.Name
	p.cpu = cpuModel(p, m.opts.cpu)
	var ti TransportInfo
	switch m.opts.transport {
	case TransportAuto:
		ti = DetectTransport()
		if ti.Name == channel.TransportVhostUserVsock && m.opts.vsockBackend != "" {
			ti.Backend = m.opts.vsockBackend
		}
	case channel.TransportVhostUserVsock:
		ti = TransportInfo{Name: channel.TransportVhostUserVsock, Reason: "requested", Backend: m.opts.vsockBackend}
		if ti.Backend == "" {
			b, err := channel.FindVsockBackend()
			if err != nil {
				return p, ai, ti, fmt.Errorf("vm %s: %w", cfg.Name, err)
			}
			ti.Backend = b
		}
	default:
		ti = TransportInfo{Name: m.opts.transport, Reason: "requested"}
	}
	p.transport = ti.Name
	for i := range cfg.SharedDirs {
		p.fsSockets = append(p.fsSockets, statePath(cfg, fmt.Sprintf(virtiofsdSock, i)))
	}
	return p, ai, ti, nil
}

// Start launches the helpers and QEMU and returns once QEMU answers on QMP.
func (m *Machine) Start(ctx context.Context) (retErr error) {
	m.mu.Lock()
	if m.state != vmm.StateCreated {
		st := m.state
		m.mu.Unlock()
		return fmt.Errorf("vm %s: Start in state %s: a machine starts once; create a new one", m.cfg.Name, st)
	}
	m.state = vmm.StateRunning // reserve; reset on failure below
	m.mu.Unlock()
	defer func() {
		if retErr != nil {
			m.killHelpers()
			m.mu.Lock()
			if m.cmd == nil {
				m.state = vmm.StateCrashed
				m.exitErr = retErr // Wait reports why the machine never ran
				close(m.exited)
			}
			m.mu.Unlock()
		}
	}()

	cfg := m.cfg
	bin, err := exec.LookPath(m.binary())
	if err != nil {
		return fmt.Errorf("vm %s: QEMU (%s) not found: %w; run scripts/setup-vm-host.sh", cfg.Name, m.binary(), err)
	}
	if _, err := os.Stat(cfg.Kernel); err != nil {
		return fmt.Errorf("vm %s: kernel: %w; run scripts/setup-vm-host.sh or set the kernel path", cfg.Name, err)
	}
	if cfg.Initrd != "" {
		if _, err := os.Stat(cfg.Initrd); err != nil {
			return fmt.Errorf("vm %s: initrd: %w", cfg.Name, err)
		}
	}
	for i, d := range cfg.Disks {
		if _, err := os.Stat(d.Path); err != nil {
			return fmt.Errorf("vm %s: Disks[%d]: %w", cfg.Name, i, err)
		}
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("vm %s: state dir: %w", cfg.Name, err)
	}
	p, ai, ti, err := m.resolve()
	if err != nil {
		return err
	}
	if err := m.checkRestore(ti.Name); err != nil {
		return err
	}
	if ai.Name == AccelTCG && m.opts.accel == AccelAuto {
		m.log.Warn("no usable hardware virtualisation; guest runs under TCG software emulation", "reason", ai.Reason)
	}
	m.log.Info("starting vm", "accel", ai.Name, "transport", ti.Name, "transport_reason", ti.Reason, "machine", machineName(p))
	for _, s := range []string{p.qmpSock, p.vhostUser, p.serialSock} {
		_ = os.Remove(s)
	}
	m.mu.Lock()
	m.plan, m.accelInfo, m.transport = p, ai, ti
	m.mu.Unlock()

	if ti.Name == channel.TransportVhostUserVsock {
		uds := statePath(cfg, vsockUDSName)
		_ = os.Remove(uds)
		if err := m.startHelper(ctx, "vsock backend", ti.Backend, backendLogName, backendPidName, p.vhostUser,
			"--guest-cid", strconv.FormatUint(uint64(cfg.Channel.CID), 10), "--socket", p.vhostUser, "--uds-path", uds); err != nil {
			return err
		}
	}
	for i, s := range cfg.SharedDirs {
		_ = os.Remove(p.fsSockets[i])
		if err := m.startHelper(ctx, "virtiofsd "+s.Tag, m.opts.virtiofsd, fmt.Sprintf(virtiofsdLogFmt, i), "", p.fsSockets[i],
			"--socket-path="+p.fsSockets[i], "-o", "source="+s.Path, "-o", "cache=auto"); err != nil {
			return err
		}
	}

	args := append(append(buildArgs(cfg, p), restoreArgs(cfg)...), m.opts.extraArgs...)
	logf, err := os.OpenFile(statePath(cfg, qemuLogName), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("vm %s: %w", cfg.Name, err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group: a Ctrl-C in the driver's terminal must not kill guests.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	m.log.Debug("qemu command", "args", args)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("vm %s: start %s: %w", cfg.Name, bin, err)
	}
	m.mu.Lock()
	m.cmd = cmd
	m.mu.Unlock()
	_ = os.WriteFile(statePath(cfg, qemuPidName), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600)
	go m.reap()

	err = m.waitQMP(ctx)
	if err == nil {
		err = m.waitRestored(ctx)
	}
	if err != nil {
		_ = m.Kill()
		<-m.exited
		m.mu.Lock()
		m.state = vmm.StateCrashed // whatever reap concluded, this start failed
		m.mu.Unlock()
		return err
	}
	switch ti.Name {
	case channel.TransportVhostUserVsock:
		m.setHost(channel.NewHybridVsock(statePath(cfg, vsockUDSName)))
	case channel.TransportVirtioSerial:
		m.setHost(channel.NewSerial(p.serialSock, m.log))
	case channel.TransportVhostVsock:
		m.setHost(channel.NewVhostVsock(cfg.Channel.CID))
	}
	return nil
}

func (m *Machine) setHost(h *channel.Host) {
	m.mu.Lock()
	m.host = h
	m.mu.Unlock()
}

// startHelper starts a helper process and waits until it has created sock.
func (m *Machine) startHelper(ctx context.Context, what, bin, logName, pidName, sock string, args ...string) error {
	logf, err := os.OpenFile(statePath(m.cfg, logName), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("vm %s: %s: %w", m.cfg.Name, what, err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("vm %s: start %s (%s): %w", m.cfg.Name, what, bin, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	m.mu.Lock()
	m.helpers = append(m.helpers, cmd)
	m.mu.Unlock()
	if pidName != "" {
		_ = os.WriteFile(statePath(m.cfg, pidName), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600)
	}
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := os.Stat(sock); err == nil {
			// Reap in the background so the helper never lingers as a zombie.
			go func() { <-done }()
			return nil
		}
		select {
		case err := <-done:
			return fmt.Errorf("vm %s: %s exited at start (%v): %s", m.cfg.Name, what, err, tail(statePath(m.cfg, logName), 2048))
		case <-deadline.C:
			return fmt.Errorf("vm %s: %s did not create %s within 10s: %s", m.cfg.Name, what, sock, tail(statePath(m.cfg, logName), 2048))
		case <-ctx.Done():
			return fmt.Errorf("vm %s: waiting for %s: %w", m.cfg.Name, what, ctx.Err())
		case <-tick.C:
		}
	}
}

func (m *Machine) reap() {
	err := m.cmd.Wait()
	m.killHelpers()
	m.mu.Lock()
	m.exitErr = err
	if err != nil && !m.stopping {
		m.state = vmm.StateCrashed
	} else {
		m.state = vmm.StateStopped
	}
	h := m.host
	m.mu.Unlock()
	if h != nil {
		_ = h.Close()
	}
	_ = os.Remove(statePath(m.cfg, qemuPidName))
	m.mu.Lock()
	saved := m.saved
	m.mu.Unlock()
	if m.cfg.MemoryFile != "" && !saved {
		// Guest RAM of a machine that ended without being saved: nothing will map it
		// again, so give the disk space back.
		_ = os.Remove(m.cfg.MemoryFile)
	}
	close(m.exited)
	m.log.Info("vm exited", "err", err)
}

func (m *Machine) killHelpers() {
	m.mu.Lock()
	hs := m.helpers
	m.helpers = nil
	m.mu.Unlock()
	for _, h := range hs {
		if h.Process != nil {
			_ = h.Process.Kill()
		}
	}
	_ = os.Remove(statePath(m.cfg, backendPidName))
}

// waitQMP waits until QEMU accepts QMP connections, or exits, or the start timeout.
func (m *Machine) waitQMP(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, m.opts.startTimeout)
	defer cancel()
	for {
		if st, err := m.status(); err == nil {
			m.log.Debug("qemu up", "status", st)
			return nil
		}
		select {
		case <-m.exited:
			return fmt.Errorf("vm %s: QEMU exited at start (%v)\nqemu output:\n%s\nconsole:\n%s", m.cfg.Name, m.exitErr,
				tail(statePath(m.cfg, qemuLogName), 4096), tail(m.cfg.ConsoleLog, 4096))
		case <-ctx.Done():
			return fmt.Errorf("vm %s: QEMU did not open its QMP socket: %w\nqemu output:\n%s", m.cfg.Name, ctx.Err(),
				tail(statePath(m.cfg, qemuLogName), 4096))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// qmpRun runs one QMP command on a fresh connection (QEMU serves one QMP client at a
// time; short connections never block another user for long).
func (m *Machine) qmpRun(cmd string) ([]byte, error) {
	mon, err := qmp.NewSocketMonitor("unix", statePath(m.cfg, qmpSockName), 2*time.Second)
	if err != nil {
		return nil, err
	}
	if err := mon.Connect(); err != nil {
		return nil, err
	}
	defer mon.Disconnect()
	return mon.Run([]byte(`{"execute":"` + cmd + `"}`))
}

// Status returns QEMU's run state ("running", "paused", "shutdown", ...) over QMP.
func (m *Machine) Status(ctx context.Context) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	return m.status()
}

func (m *Machine) status() (string, error) {
	raw, err := m.qmpRun("query-status")
	if err != nil {
		return "", err
	}
	var r struct {
		Return struct {
			Status string `json:"status"`
		} `json:"return"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return "", fmt.Errorf("query-status reply %q: %w", raw, err)
	}
	return r.Return.Status, nil
}

// DefaultStopGrace is how long Stop waits for the guest when ctx has no deadline.
const DefaultStopGrace = 10 * time.Second

// Stop presses the ACPI power button, waits for the guest to power off until ctx is
// done (DefaultStopGrace without a deadline), then asks QEMU to quit and finally kills it.
func (m *Machine) Stop(ctx context.Context) error {
	m.mu.Lock()
	if m.cmd == nil {
		m.mu.Unlock()
		return nil
	}
	m.stopping = true
	m.mu.Unlock()
	select {
	case <-m.exited:
		return nil
	default:
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultStopGrace)
		defer cancel()
	}
	if _, err := m.qmpRun("system_powerdown"); err != nil {
		m.log.Debug("system_powerdown", "err", err)
	}
	select {
	case <-m.exited:
		return nil
	case <-ctx.Done():
	}
	m.log.Warn("guest did not power off in time; quitting QEMU")
	if _, err := m.qmpRun("quit"); err != nil {
		m.log.Debug("quit", "err", err)
	}
	select {
	case <-m.exited:
		return nil
	case <-time.After(2 * time.Second):
	}
	return m.Kill()
}

// Kill kills QEMU (and so its helpers) at once.
func (m *Machine) Kill() error {
	m.mu.Lock()
	cmd := m.cmd
	m.stopping = true
	m.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		m.killHelpers()
		return nil
	}
	if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("vm %s: kill pid %d: %w", m.cfg.Name, cmd.Process.Pid, err)
	}
	return nil
}

// Wait blocks until QEMU exits and returns its exit error (nil on a clean exit).
func (m *Machine) Wait(ctx context.Context) error {
	select {
	case <-m.exited:
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.exitErr != nil {
			return fmt.Errorf("vm %s: qemu: %w", m.cfg.Name, m.exitErr)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Exited is closed when QEMU has exited.
func (m *Machine) Exited() <-chan struct{} { return m.exited }

// State of the machine.
func (m *Machine) State() vmm.State {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state
}

// PID of QEMU, 0 before Start.
func (m *Machine) PID() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil || m.cmd.Process == nil {
		return 0
	}
	return m.cmd.Process.Pid
}

// HelperPIDs are the PIDs of helper processes (vsock backend, virtiofsd).
func (m *Machine) HelperPIDs() []int {
	m.mu.Lock()
	defer m.mu.Unlock()
	var pids []int
	for _, h := range m.helpers {
		if h.Process != nil {
			pids = append(pids, h.Process.Pid)
		}
	}
	return pids
}

// Host is the host end of the guest channel (nil before Start).
func (m *Machine) Host() *channel.Host {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.host
}

// ConsoleTail returns up to n trailing bytes of the guest console log.
func (m *Machine) ConsoleTail(n int) string { return tail(m.cfg.ConsoleLog, n) }

func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	off := st.Size() - int64(n)
	if off < 0 {
		off = 0
	}
	b, _ := io.ReadAll(io.NewSectionReader(f, off, st.Size()-off))
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return "(empty)"
	}
	return string(b)
}
