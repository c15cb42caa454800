package vm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/api/datamodelv1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/vm/internal/runner"
	"github.com/openshell/openshell/drivers/vm/internal/state"
	"github.com/openshell/openshell/guest/channel/wire"
	"github.com/openshell/openshell/internal/procstat"
)

// Name is the driver name reported in capabilities.
const Name = "vm"

// Version is reported in capabilities.
var Version = "0.1.0"

// Condition reasons specific to the VM driver (all terminal: phase ERROR).
const (
	ReasonVMExited                = runner.ReasonVMExited
	ReasonBootFailed              = runner.ReasonBootFailed
	ReasonProvisioningFailed      = "ProvisioningFailed"
	ReasonProvisioningInterrupted = "ProvisioningInterrupted"
	ReasonKilled                  = runner.ReasonKilled
)

type phase int

const (
	phaseProvisioning phase = iota // image, disk, initramfs being prepared
	phaseBooting                   // runner started, guest not yet dialled in
	phaseRunning                   // guest fetched its bootstrap config
	phaseStopping                  // graceful shutdown requested
	phaseStopped                   // VM down on request; disk kept
	phaseFailed                    // VM gone without being asked, or never started
	phaseDeleting
)

// sandbox is the driver's view of one VM sandbox. Fields under mu.
type sandbox struct {
	// op serialises Stop and Start of one sandbox (Delete does not wait for it).
	op sync.Mutex

	id, name string
	paths    state.Paths
	cid      uint32 // guest vsock CID, fixed for the sandbox's life

	mu          sync.Mutex
	phase       phase
	reason, msg string
	since       time.Time
	runnerPID   int
	runnerStart uint64
	vmmPID      int
	provCancel  context.CancelFunc
	provDone    chan struct{}
	monCancel   context.CancelFunc
	monDone     chan struct{}
	exited      chan struct{} // closed when the current runner is gone
	pool        string        // the warm pool its VM was claimed from ("" = booted for it)

	// steps are the driver's steps of the current create or start (image, disk);
	// runnerSteps the runner's (runner, vmm, the guest's, bootstrap).
	steps, runnerSteps []wire.HostStep
}

// stamp records that step phase of the current create or start ended now.
func (s *sandbox) stamp(phase string) { s.stampAt(phase, time.Now()) }

// stampAt ends a create timeline step at a time already past.
func (s *sandbox) stampAt(phase string, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.steps = append(s.steps, wire.HostStep{Phase: phase, At: at.UTC()})
}

// timelineLocked is the create timeline so far, in order, each step's took from the
// one before. s.mu held.
func (s *sandbox) timelineLocked() []*datamodelv1.TimelineStep {
	all := append(append([]wire.HostStep(nil), s.steps...), s.runnerSteps...)
	out := make([]*datamodelv1.TimelineStep, 0, len(all))
	var prev int64
	for i, st := range all {
		at := st.At.UnixMicro()
		if i > 0 && at < prev { // a runner clock step never runs backwards in the report
			at = prev
		}
		var took int64
		if i > 0 {
			took = at - prev
		}
		out = append(out, &datamodelv1.TimelineStep{Phase: st.Phase, AtUnixUs: at, TookUs: took})
		prev = at
	}
	return out
}

func (s *sandbox) setPhase(p phase, reason, msg string) {
	s.phase, s.reason, s.msg, s.since = p, reason, msg, time.Now().UTC()
}

// Driver is the VM compute driver.
type Driver struct {
	cfg Config
	log *slog.Logger
	hub *hub

	ctx    context.Context // driver lifetime: provisioning and monitors
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	sandboxes map[string]*sandbox

	lock *os.File // flock on <StateDir>/driver.lock: one driver per state dir
	gpus gpuHeld  // passed-through devices per sandbox
	// pools are the warm pools (pool.go).
	pools *pools

	// bootID is the host's boot id ("" when unknown): recorded with every runner
	// started, compared on adoption to tell a host reboot from a killed runner.
	bootID string
}

var (
	_ drivers.Driver           = (*Driver)(nil)
	_ drivers.ListenerRequirer = (*Driver)(nil)
)

// New creates the driver and re-adopts the sandboxes found in cfg.StateDir: running
// VMs keep running, ended ones are reported with their tombstone, and those cut off by
// a host reboot are started again in the background (Config.ResumeAfterHostReboot).
func New(cfg Config, log *slog.Logger) (*Driver, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	log = log.With("driver", Name)
	if len(cfg.RunnerCommand) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("vm driver: find own executable for the runner re-exec: %w", err)
		}
		cfg.RunnerCommand = []string{exe, "runner"}
	}
	for _, d := range []string{cfg.StateDir, filepath.Join(cfg.StateDir, "sb")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("vm driver: state dir %s: %w", d, err)
		}
	}
	lock, err := lockStateDir(cfg.StateDir, lockWait)
	if err != nil {
		return nil, err
	}
	bootID, err := cfg.BootID()
	if err != nil {
		// Only resuming after a host reboot depends on it.
		log.Warn("cannot read the host boot id; sandboxes will not be resumed after a host reboot", "err", err)
		bootID = ""
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &Driver{cfg: cfg, log: log, hub: newHub(log), ctx: ctx, cancel: cancel, sandboxes: map[string]*sandbox{}, lock: lock, bootID: bootID}
	d.pools = newPools(d)
	d.recoverGPUs()
	d.cleanPartialSnapshots()
	d.adoptAll()
	d.startPools()
	return d, nil
}

// PrioritizeControlPlane raises the scheduling group of this process's session above
// its VMs' (runner.ControlPlaneNice) when that session is the control plane's own: led
// by this process or by its parent, the gateway (`openshell gateway start` makes the
// gateway a session leader). A driver started from a shell or a test run leaves that
// session's group alone. The driver binary calls it when it serves (not New, which tests
// call in-process).
func PrioritizeControlPlane() error {
	sid, err := unix.Getsid(0)
	if err != nil {
		return err
	}
	if sid != os.Getpid() && sid != os.Getppid() {
		return fmt.Errorf("its session (%d) is not the gateway's or its own: left as it is", sid)
	}
	return runner.PrioritizeControlPlane(os.Getpid())
}

// lockWait is how long New waits for a previous driver to release the state dir.
var lockWait = 15 * time.Second

// lockStateDir takes the driver lock of a state dir, waiting up to wait for a previous
// driver (e.g. one whose gateway just died) to let go.
func lockStateDir(dir string, wait time.Duration) (*os.File, error) {
	p := filepath.Join(dir, "driver.lock")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("vm driver: lock %s: %w", p, err)
	}
	deadline := time.Now().Add(wait)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("vm driver: another openshell-driver-vm uses state dir %s (lock %s: %w); stop it or use another --state-dir", dir, p, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Config returns the effective configuration (defaults filled).
func (d *Driver) Config() Config { return d.cfg }

func (d *Driver) sandboxDir(id string) string {
	return filepath.Join(d.cfg.StateDir, "sb", state.DirName(id))
}

// firstCID is the lowest guest CID the driver hands out (0-2 are reserved, and low
// numbers are what other tools pick by default).
const firstCID = 1000

// freeCIDLocked returns the lowest CID no sandbox of this driver uses. d.mu held.
func (d *Driver) freeCIDLocked() uint32 {
	used := map[uint32]bool{}
	for _, s := range d.sandboxes {
		used[s.cid] = true
	}
	d.pools.cidsLocked(used) // warm pools' VMs too
	c := uint32(firstCID)
	for used[c] {
		c++
	}
	return c
}

// ---- observation ----

func (d *Driver) snapshot(s *sandbox) *computev1.DriverSandbox {
	s.mu.Lock()
	defer s.mu.Unlock()
	ts := s.since.Format(time.RFC3339)
	cond := func(typ, status, reason, msg string) *computev1.DriverCondition {
		return &computev1.DriverCondition{Type: typ, Status: status, Reason: reason, Message: msg, LastTransitionTime: ts}
	}
	st := &computev1.DriverSandboxStatus{SandboxName: s.name, InstanceId: "vm-" + s.id, CreateTimeline: s.timelineLocked()}
	st.FromPool = s.pool
	switch s.phase {
	case phaseProvisioning, phaseBooting:
		st.Conditions = []*computev1.DriverCondition{cond(drivers.ConditionReady, drivers.StatusFalse, drivers.ReasonStarting, s.msg)}
	case phaseRunning, phaseStopping:
		st.Conditions = []*computev1.DriverCondition{cond(drivers.ConditionReady, drivers.StatusTrue, drivers.ReasonRunning, s.msg)}
	case phaseStopped:
		st.Conditions = []*computev1.DriverCondition{
			cond(drivers.ConditionReady, drivers.StatusFalse, drivers.ReasonContainerStopped, s.msg),
			cond(drivers.ConditionSuspended, drivers.StatusTrue, drivers.ReasonStopped, s.msg),
		}
	case phaseFailed:
		st.Conditions = []*computev1.DriverCondition{cond(drivers.ConditionReady, drivers.StatusFalse, s.reason, s.msg)}
	case phaseDeleting:
		st.Deleting = true
		st.Conditions = []*computev1.DriverCondition{cond(drivers.ConditionReady, drivers.StatusFalse, "Deleting", "deleting the VM")}
	}
	if c := d.gpuCondition(s.id, ts); c != nil {
		st.Conditions = append(st.Conditions, c)
	}
	return &computev1.DriverSandbox{Id: s.id, Name: s.name, Status: st}
}

// emit publishes the sandbox's current state to watchers. Never call with s.mu held.
func (d *Driver) emit(s *sandbox) {
	d.hub.mu.Lock()
	defer d.hub.mu.Unlock()
	d.hub.publishLocked(&computev1.WatchSandboxesEvent{Payload: &computev1.WatchSandboxesEvent_Sandbox{
		Sandbox: &computev1.WatchSandboxesSandboxEvent{Sandbox: d.snapshot(s)},
	}})
}

func (d *Driver) platformEvent(id, typ, reason, msg string) {
	d.hub.mu.Lock()
	defer d.hub.mu.Unlock()
	d.hub.publishLocked(&computev1.WatchSandboxesEvent{Payload: &computev1.WatchSandboxesEvent_PlatformEvent{
		PlatformEvent: &computev1.WatchSandboxesPlatformEvent{SandboxId: id, Event: &computev1.DriverPlatformEvent{
			TimestampMs: time.Now().UnixMilli(), Source: Name, Type: typ, Reason: reason, Message: msg,
		}},
	}})
}

// beginOp finds a sandbox and takes its operation lock for a Stop, Start or Suspend:
// its phase and current runner's exit channel as of then; unlock ends the operation.
func (d *Driver) beginOp(id string) (s *sandbox, ph phase, exited chan struct{}, unlock func(), err error) {
	if s, err = d.lookup(id); err != nil {
		return nil, 0, nil, nil, err
	}
	s.op.Lock()
	s.mu.Lock()
	ph, exited = s.phase, s.exited
	s.mu.Unlock()
	return s, ph, exited, s.op.Unlock, nil
}

func (d *Driver) lookup(id string) (*sandbox, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, ok := d.sandboxes[id]
	if !ok {
		return nil, fmt.Errorf("vm sandbox %q: %w", id, drivers.ErrNotFound)
	}
	return s, nil
}

// Capabilities implements drivers.Driver.
func (d *Driver) Capabilities(context.Context) (*computev1.GetCapabilitiesResponse, error) {
	return &computev1.GetCapabilitiesResponse{DriverName: Name, DriverVersion: Version, DefaultImage: d.cfg.DefaultImage}, nil
}

// ListenerRequirements implements drivers.ListenerRequirer: runners reach the gateway
// over loopback (--gateway-endpoint 127.0.0.1:PORT) for sandboxes the gateway gave no
// socket dir (and runners booted before it did), so the gateway must listen there.
func (d *Driver) ListenerRequirements(context.Context) ([]*computev1.GatewayListenerRequirement, error) {
	host, _, err := net.SplitHostPort(d.cfg.GatewayEndpoint)
	if err != nil {
		return nil, nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, nil
	}
	return []*computev1.GatewayListenerRequirement{{
		Reason:   "VM runners bridge guest sessions to the gateway over loopback (" + d.cfg.GatewayEndpoint + ")",
		Selector: &computev1.GatewayListenerRequirement_LoopbackInterface{LoopbackInterface: &computev1.GatewayLoopbackInterfaceRequirement{}},
	}}, nil
}

// Get implements drivers.Driver.
func (d *Driver) Get(_ context.Context, id, _ string) (*computev1.DriverSandbox, error) {
	s, err := d.lookup(id)
	if err != nil {
		return nil, err
	}
	return d.snapshot(s), nil
}

// List implements drivers.Driver.
func (d *Driver) List(context.Context) ([]*computev1.DriverSandbox, error) {
	d.mu.Lock()
	all := make([]*sandbox, 0, len(d.sandboxes))
	for _, s := range d.sandboxes {
		all = append(all, s)
	}
	d.mu.Unlock()
	sort.Slice(all, func(i, j int) bool { return all[i].id < all[j].id })
	out := make([]*computev1.DriverSandbox, 0, len(all))
	for _, s := range all {
		out = append(out, d.snapshot(s))
	}
	return out, nil
}

// Watch implements drivers.Driver: the current sandboxes first, then every change.
func (d *Driver) Watch(ctx context.Context) (<-chan *computev1.WatchSandboxesEvent, error) {
	return d.hub.subscribe(ctx, func() []*computev1.WatchSandboxesEvent {
		list, _ := d.List(ctx)
		evs := make([]*computev1.WatchSandboxesEvent, 0, len(list))
		for _, sb := range list {
			evs = append(evs, &computev1.WatchSandboxesEvent{Payload: &computev1.WatchSandboxesEvent_Sandbox{
				Sandbox: &computev1.WatchSandboxesSandboxEvent{Sandbox: sb},
			}})
		}
		return evs
	}), nil
}

// Close stops the driver's goroutines. Running VMs and their runners are left alone:
// the next driver re-adopts them.
func (d *Driver) Close() error {
	d.cancel()
	d.wg.Wait()
	d.hub.close()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lock != nil {
		d.lock.Close()
		d.lock = nil
	}
	return nil
}

// ---- create ----

// ValidateCreate implements drivers.Driver.
func (d *Driver) ValidateCreate(_ context.Context, sb *computev1.DriverSandbox) error {
	_, err := d.resolve(sb)
	return err
}

// Create implements drivers.Driver. It records the sandbox and returns; the image,
// disk and boot proceed in the background and are reported through Watch/Get.
func (d *Driver) Create(_ context.Context, sb *computev1.DriverSandbox) (retErr error) {
	received := time.Now().UTC()
	res, err := d.resolve(sb)
	if err != nil {
		return err
	}
	if sb.GetSpec().GetFromSnapshot() == "" {
		if claimed, err := d.claim(sb, res); claimed || err != nil {
			return err
		}
	}
	id := sb.GetId()
	dir := d.sandboxDir(id)
	d.mu.Lock()
	if _, ok := d.sandboxes[id]; ok {
		d.mu.Unlock()
		return fmt.Errorf("vm sandbox %q: %w", id, drivers.ErrAlreadyExists)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		d.mu.Unlock()
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("vm sandbox %q: state directory %s already exists (left over?): remove it or delete the sandbox: %w", id, dir, drivers.ErrAlreadyExists)
		}
		return fmt.Errorf("vm sandbox %q: create state directory: %w", id, err)
	}
	s := &sandbox{id: id, name: sb.GetName(), paths: state.PathsFor(dir), cid: d.freeCIDLocked()}
	s.setPhase(phaseProvisioning, drivers.ReasonStarting, "preparing the image")
	s.steps = []wire.HostStep{{Phase: "driver", At: received}}
	d.sandboxes[id] = s
	d.mu.Unlock()
	defer func() {
		if retErr != nil {
			d.mu.Lock()
			delete(d.sandboxes, id)
			d.mu.Unlock()
			os.RemoveAll(dir)
		}
	}()

	rec := &state.Record{
		SandboxID: id, SandboxName: sb.GetName(), SpecDigest: specDigest(sb.GetSpec()),
		CreatedAt: time.Now().UTC(), Image: res.image, CID: s.cid, VCPUs: res.vcpus, MemoryMiB: res.memoryMiB, Paths: s.paths,
	}
	if err := state.Create(rec); err != nil {
		return fmt.Errorf("vm sandbox %q: %w", id, err)
	}
	if err := d.acquireGPUs(s, res.gpu); err != nil {
		return err
	}
	d.log.Info("creating VM sandbox", "sandbox_id", id, "name", sb.GetName(), "image", res.image, "vcpus", res.vcpus, "memory_mib", res.memoryMiB)
	d.emit(s)

	ctx, cancel := context.WithCancel(d.ctx)
	s.mu.Lock()
	s.provCancel, s.provDone = cancel, make(chan struct{})
	done := s.provDone
	s.mu.Unlock()
	spec := proto.Clone(sb.GetSpec()).(*computev1.DriverSandboxSpec)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer close(done)
		defer cancel()
		d.provision(ctx, s, res, spec)
	}()
	return nil
}

func specDigest(spec *computev1.DriverSandboxSpec) string {
	c := proto.Clone(spec).(*computev1.DriverSandboxSpec)
	if c == nil {
		c = &computev1.DriverSandboxSpec{}
	}
	c.SandboxToken = ""
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(c)
	h := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(h[:])
}

// provision prepares the image, disk and initramfs, writes runner.json and boots.
func (d *Driver) provision(ctx context.Context, s *sandbox, res *resolved, spec *computev1.DriverSandboxSpec) {
	log := d.log.With("sandbox_id", s.id)
	rs, err := d.prepare(ctx, s, res, spec, func(msg string) {
		log.Info("provisioning", "step", msg)
		s.mu.Lock()
		s.msg = msg
		s.mu.Unlock()
		d.platformEvent(s.id, "Normal", "Provisioning", msg)
	})
	if err == nil {
		err = runner.WriteSpec(s.paths.Dir, rs)
	}
	if err != nil {
		if ctx.Err() != nil {
			log.Info("provisioning cancelled", "err", err)
			return
		}
		log.Error("provisioning failed", "err", err)
		ts := &state.Tombstone{Reason: ReasonProvisioningFailed, Message: err.Error(), Time: time.Now().UTC()}
		state.Update(s.paths.Dir, func(r *state.Record) error { r.Error = ts; return nil })
		s.mu.Lock()
		s.setPhase(phaseFailed, ts.Reason, ts.Message)
		s.mu.Unlock()
		d.emit(s)
		return
	}
	if ctx.Err() != nil { // deleted or driver closing meanwhile
		return
	}
	if err := d.boot(s); err != nil {
		log.Error("boot failed", "err", err)
	}
}

// ---- runner processes ----

// boot spawns the runner for s and starts watching it. The caller has written
// runner.json.
func (d *Driver) boot(s *sandbox) error {
	if err := state.ClearTombstone(s.paths.Dir); err != nil {
		return d.fail(s, ReasonBootFailed, err)
	}
	// The boot id goes in before the runner exists: whatever pids the runner records
	// then belong to this boot of the host.
	if _, err := state.Update(s.paths.Dir, func(r *state.Record) error { r.BootID = d.bootID; return nil }); err != nil {
		return d.fail(s, ReasonBootFailed, err)
	}
	cmd, closeLog, err := d.runnerCommand(s.paths)
	if err != nil {
		return d.fail(s, ReasonBootFailed, err)
	}
	defer closeLog()
	// Check for a concurrent Delete and record the runner under one lock: Delete either
	// sees the runner (and kills it) or this refuses to start one.
	s.mu.Lock()
	if s.phase == phaseDeleting {
		s.mu.Unlock()
		return fmt.Errorf("vm sandbox %q is being deleted: %w", s.id, drivers.ErrFailedPrecondition)
	}
	if err := cmd.Start(); err != nil {
		s.mu.Unlock()
		return d.fail(s, ReasonBootFailed, fmt.Errorf("start runner %v: %w", cmd.Args, err))
	}
	pid := cmd.Process.Pid
	start, _ := state.ProcStartTime(pid)
	s.runnerPID, s.runnerStart = pid, start
	s.setPhase(phaseBooting, drivers.ReasonStarting, "VM booting")
	s.mu.Unlock()
	// Reap it if it ends while we live; after a driver restart init reaps it.
	go cmd.Wait()
	d.log.Info("runner started", "sandbox_id", s.id, "runner_pid", pid)
	d.emit(s)
	d.startMonitor(s, pid, start)
	return nil
}

func (d *Driver) fail(s *sandbox, reason string, err error) error {
	s.mu.Lock()
	if s.phase == phaseDeleting { // a Delete raced the boot: its files may be gone
		s.mu.Unlock()
		return fmt.Errorf("vm sandbox %q is being deleted: %w", s.id, errors.Join(err, drivers.ErrFailedPrecondition))
	}
	s.setPhase(phaseFailed, reason, err.Error())
	s.mu.Unlock()
	d.emit(s)
	return fmt.Errorf("vm sandbox %q: %w", s.id, err)
}

// startMonitor follows the runner's status stream until the runner is gone.
func (d *Driver) startMonitor(s *sandbox, pid int, start uint64) {
	ctx, cancel := context.WithCancel(d.ctx)
	done := make(chan struct{})
	exited := make(chan struct{})
	s.mu.Lock()
	s.monCancel, s.monDone, s.exited = cancel, done, exited
	s.mu.Unlock()
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer close(done)
		defer cancel()
		d.monitor(ctx, s, pid, start, exited)
	}()
}

func (d *Driver) monitor(ctx context.Context, s *sandbox, pid int, start uint64, exited chan struct{}) {
	cl := runner.NewClient(s.paths.ControlSocket)
	for {
		err := cl.Watch(ctx, func(st runner.Status) { d.applyRunnerStatus(s, st) })
		if ctx.Err() != nil {
			return
		}
		if err == nil || !state.SameProcess(pid, start) {
			// The runner said it is done (or died): wait for it to go so its tombstone
			// is complete, then report.
			deadline := time.Now().Add(10 * time.Second)
			for state.SameProcess(pid, start) && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			d.runnerGone(s)
			close(exited)
			return
		}
		// Alive but not answering yet (still starting up): retry.
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (d *Driver) applyRunnerStatus(s *sandbox, st runner.Status) {
	s.mu.Lock()
	changed := false
	if st.VMMPID != 0 {
		s.vmmPID = st.VMMPID
	}
	switch st.State {
	case runner.StateRunning:
		if s.phase == phaseBooting {
			s.runnerSteps = st.Timeline
			if st.ClaimedAt.IsZero() { // a claimed VM's runner started for its pool
				s.runnerSteps = append([]wire.HostStep{{Phase: "runner", At: st.StartedAt}}, st.Timeline...)
			}
			s.setPhase(phaseRunning, drivers.ReasonRunning, "guest booted at "+st.BootedAt.Format(time.RFC3339Nano))
			changed = true
		}
	case runner.StateStopping:
		if s.phase == phaseRunning || s.phase == phaseBooting {
			s.setPhase(phaseStopping, drivers.ReasonRunning, "stopping")
		}
	}
	s.mu.Unlock()
	if changed {
		d.log.Info("VM sandbox ready", "sandbox_id", s.id, "vmm_pid", st.VMMPID, "timeline", timelineAttr(s))
		d.emit(s)
	}
}

// timelineAttr renders s's timeline for one log line: "image=12ms disk=3ms …".
func timelineAttr(s *sandbox) string {
	s.mu.Lock()
	tl := s.timelineLocked()
	s.mu.Unlock()
	var b []byte
	for i, st := range tl {
		if i > 0 {
			b = append(b, ' ')
		}
		b = fmt.Appendf(b, "%s=%dms", st.GetPhase(), st.GetTookUs()/1000)
	}
	return string(b)
}

// runnerGone reports the end of a runner from its tombstone.
func (d *Driver) runnerGone(s *sandbox) {
	ts, err := state.ReadTombstone(s.paths.Dir)
	if err != nil {
		d.log.Warn("read tombstone", "sandbox_id", s.id, "err", err)
	}
	s.mu.Lock()
	if s.phase == phaseDeleting {
		s.mu.Unlock()
		return
	}
	d.applyTombstone(s, ts)
	s.runnerPID, s.runnerStart, s.vmmPID = 0, 0, 0
	reason, msg := s.reason, s.msg
	s.mu.Unlock()
	if ts == nil {
		// The runner died without cleaning up (kill -9): a VM without its runner has
		// no gateway bridge and nobody to reap it, so end it too.
		d.killLeftovers(s)
	}
	d.log.Info("VM sandbox ended", "sandbox_id", s.id, "reason", reason, "message", firstLine(msg))
	d.emit(s)
}

// applyTombstone sets s's phase from a tombstone (nil = the runner vanished). s.mu held.
func (d *Driver) applyTombstone(s *sandbox, ts *state.Tombstone) {
	switch {
	case ts == nil:
		s.setPhase(phaseFailed, ReasonVMExited, "the VM runner is gone without leaving a tombstone (host restart or runner killed); see "+s.paths.RunnerLog)
	case ts.Reason == runner.ReasonStopped:
		s.setPhase(phaseStopped, drivers.ReasonContainerStopped, "stopped")
	case ts.Reason == runner.ReasonSuspended:
		s.setPhase(phaseStopped, drivers.ReasonContainerStopped, msgSuspended)
	default:
		msg := ts.Message
		if ts.ConsoleTail != "" {
			msg += "\nconsole tail:\n" + ts.ConsoleTail
		}
		s.setPhase(phaseFailed, ts.Reason, msg)
	}
}

func firstLine(s string) string {
	for i, c := range s {
		if c == '\n' {
			return s[:i]
		}
	}
	return s
}

// ---- adoption ----

func (d *Driver) adoptAll() {
	root := filepath.Join(d.cfg.StateDir, "sb")
	ents, err := os.ReadDir(root)
	if err != nil {
		d.log.Warn("scan sandboxes", "dir", root, "err", err)
		return
	}
	var resume []*sandbox
	for _, e := range ents {
		if !e.IsDir() || e.Name()[0] == '.' {
			continue
		}
		dir := filepath.Join(root, e.Name())
		rec, err := state.Load(dir)
		if err != nil {
			d.log.Warn("skipping sandbox directory without a usable state record", "dir", dir, "err", err)
			continue
		}
		// A warm pool's VM: idle ones go back to their pool; a claimed one is a
		// sandbox in a directory named after the pool member (pool.go).
		dirName, fromPool := state.DirName(rec.SandboxID), ""
		if pr, err := readPoolRecord(dir); err == nil {
			if pr.ClaimedBy == "" || pr.ClaimedBy != rec.SandboxID {
				d.adoptMember(dir, rec, pr)
				continue
			}
			dirName, fromPool = state.DirName(pr.Member), pr.Pool
			defer d.finishClaim(rec.SandboxID)
		}
		if dirName != e.Name() {
			d.log.Warn("skipping sandbox directory whose record names another id", "dir", dir, "record_id", rec.SandboxID)
			continue
		}
		s := &sandbox{id: rec.SandboxID, name: rec.SandboxName, paths: state.PathsFor(dir), cid: rec.CID, pool: fromPool}
		if d.adopt(s, rec) {
			resume = append(resume, s)
		}
		d.sandboxes[s.id] = s
	}
	// In the background: booting may take long (an image to fetch again) and New
	// must not keep the gateway waiting.
	for _, s := range resume {
		d.startResume(s)
	}
}

// adopt sets s's phase from its record and files, and re-attaches a live runner. It
// reports true when the sandbox was cut off by a host reboot and is to be started
// again (its phase is then "starting"; see startResume).
func (d *Driver) adopt(s *sandbox, rec *state.Record) (resume bool) {
	log := d.log.With("sandbox_id", s.id)
	_, specErr := os.Stat(filepath.Join(s.paths.Dir, state.SpecFile))
	switch {
	case rec.Error != nil:
		s.setPhase(phaseFailed, rec.Error.Reason, rec.Error.Message)
	case !hostRebooted(rec, d.bootID) && rec.RunnerPID != 0 && state.SameProcess(rec.RunnerPID, rec.RunnerStart):
		s.runnerPID, s.runnerStart, s.vmmPID = rec.RunnerPID, rec.RunnerStart, rec.VMMPID
		s.setPhase(phaseBooting, drivers.ReasonStarting, "re-adopting the running VM")
		log.Info("re-adopting running VM", "runner_pid", rec.RunnerPID, "vmm_pid", rec.VMMPID)
		d.repointGateway(s)
		d.startMonitor(s, rec.RunnerPID, rec.RunnerStart)
		return
	case specErr != nil:
		s.setPhase(phaseFailed, ReasonProvisioningInterrupted, "the driver stopped while the sandbox was being provisioned: delete and create it again")
	default:
		ts, err := state.ReadTombstone(s.paths.Dir)
		if err != nil {
			log.Warn("read tombstone", "err", err)
		}
		switch {
		case rec.Stopped:
			s.setPhase(phaseStopped, drivers.ReasonContainerStopped, stoppedMessage(s.paths.Dir))
		case cutOffByReboot(rec, ts, d.bootID) && d.cfg.resumeAfterHostReboot():
			log.Info(msgResume, "recorded_boot_id", rec.BootID, "boot_id", d.bootID)
			s.setPhase(phaseProvisioning, drivers.ReasonStarting, msgResume)
			return true
		case cutOffByReboot(rec, ts, d.bootID):
			s.setPhase(phaseFailed, ReasonVMExited, "the host restarted while the VM ran and resume_after_host_reboot is off: start the sandbox again (openshell sandbox start)")
		default:
			d.applyTombstone(s, ts)
		}
	}
	log.Info("adopted VM sandbox", "state", s.reason)
	return false
}

const msgResume = "host restarted since the VM last ran; starting it again"

// hostRebooted reports whether the host restarted since rec's runner was started
// (false when either boot id is unknown).
func hostRebooted(rec *state.Record, bootID string) bool {
	return rec.BootID != "" && bootID != "" && rec.BootID != bootID
}

// cutOffByReboot decides whether a sandbox whose runner is gone was running when the
// host went down, rather than failed or stopped on its own: not stopped by the user,
// never failed to provision, started in another boot of the host, and either no
// tombstone (power loss, or the runner killed at shutdown) or a Stopped one without a
// user's Stop (the runner got SIGTERM as the host shut down). A VM that crashed
// (VMExited, BootFailed) or was killed stays failed, reboot or not.
func cutOffByReboot(rec *state.Record, ts *state.Tombstone, bootID string) bool {
	if rec.Error != nil || rec.Stopped || !hostRebooted(rec, bootID) {
		return false
	}
	return ts == nil || ts.Reason == runner.ReasonStopped
}

// startResume starts a sandbox cut off by a host reboot again, in the background, as
// Start does. Delete cancels it like provisioning (provCancel/provDone).
func (d *Driver) startResume(s *sandbox) {
	ctx, cancel := context.WithCancel(d.ctx)
	done := make(chan struct{})
	s.mu.Lock()
	s.provCancel, s.provDone = cancel, done
	s.mu.Unlock()
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer close(done)
		defer cancel()
		log := d.log.With("sandbox_id", s.id)
		d.platformEvent(s.id, "Normal", "HostRestarted", msgResume)
		s.op.Lock()
		defer s.op.Unlock()
		s.mu.Lock()
		ph := s.phase
		s.mu.Unlock()
		if ph != phaseProvisioning { // deleted meanwhile
			return
		}
		err := d.startLocked(ctx, s)
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			log.Info("resuming after the host restart cancelled", "err", err)
			return
		}
		log.Error("cannot start the VM again after the host restart", "err", err)
		s.mu.Lock()
		stuck := s.phase == phaseProvisioning // boot reports its own failures
		s.mu.Unlock()
		if stuck {
			d.fail(s, ReasonBootFailed, fmt.Errorf("start again after the host restarted: %w", err))
		}
	}()
}

// repointGateway makes an adopted runner (and its next boots) bridge guest sessions to
// this driver's gateway address, which may differ after a gateway restart.
func (d *Driver) repointGateway(s *sandbox) {
	rs, err := runner.ReadSpec(s.paths.Dir)
	if err != nil || rs.GatewayAddr == d.cfg.GatewayEndpoint {
		return
	}
	d.log.Info("gateway address changed since the VM booted; repointing its runner", "sandbox_id", s.id, "old", rs.GatewayAddr, "new", d.cfg.GatewayEndpoint)
	rs.GatewayAddr = d.cfg.GatewayEndpoint
	if err := runner.WriteSpec(s.paths.Dir, rs); err != nil {
		d.log.Warn("update runner spec", "sandbox_id", s.id, "err", err)
	}
	ctx, cancel := context.WithTimeout(d.ctx, 5*time.Second)
	defer cancel()
	if err := runner.NewClient(s.paths.ControlSocket).SetGateway(ctx, d.cfg.GatewayEndpoint); err != nil {
		d.log.Warn("repoint runner to the gateway", "sandbox_id", s.id, "err", err)
	}
}

// ---- stop / start / delete ----

// Stop implements drivers.Driver: graceful guest shutdown; the disk is kept.
func (d *Driver) Stop(ctx context.Context, id, _ string) error {
	s, ph, exited, unlock, err := d.beginOp(id)
	if err != nil {
		return err
	}
	defer unlock()
	switch ph {
	case phaseStopped:
		return nil
	case phaseProvisioning:
		return fmt.Errorf("vm sandbox %q is still being provisioned: wait until it is ready, or delete it: %w", id, drivers.ErrFailedPrecondition)
	case phaseDeleting:
		return fmt.Errorf("vm sandbox %q is being deleted: %w", id, drivers.ErrFailedPrecondition)
	case phaseFailed:
		d.killLeftovers(s)
	case phaseBooting, phaseRunning, phaseStopping:
		d.log.Info("stopping VM sandbox", "sandbox_id", id)
		if err := runner.NewClient(s.paths.ControlSocket).Stop(ctx); err != nil {
			d.log.Warn("ask runner to stop; terminating it", "sandbox_id", id, "err", err)
			d.signalRunner(s, syscall.SIGTERM)
		}
		select {
		case <-exited:
		case <-ctx.Done():
			return fmt.Errorf("vm sandbox %q: stop: %w", id, ctx.Err())
		}
	}
	s.mu.Lock()
	if s.phase == phaseDeleting { // deleted while stopping: nothing left to mark
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	if _, err := state.Update(s.paths.Dir, func(r *state.Record) error { r.Stopped = true; return nil }); err != nil {
		return fmt.Errorf("vm sandbox %q: %w", id, err)
	}
	s.mu.Lock()
	s.setPhase(phaseStopped, drivers.ReasonContainerStopped, "stopped")
	s.mu.Unlock()
	d.emit(s)
	return nil
}

// Start implements drivers.Driver: boots a stopped (or ended) sandbox again with the
// same writable disk.
func (d *Driver) Start(ctx context.Context, id, _ string) error {
	s, ph, _, unlock, err := d.beginOp(id)
	if err != nil {
		return err
	}
	defer unlock()
	switch ph {
	case phaseProvisioning, phaseBooting, phaseRunning:
		return nil
	case phaseDeleting:
		return fmt.Errorf("vm sandbox %q is being deleted: %w", id, drivers.ErrFailedPrecondition)
	case phaseStopping:
		return fmt.Errorf("vm sandbox %q is stopping: start it once it is stopped: %w", id, drivers.ErrFailedPrecondition)
	}
	return d.startLocked(ctx, s)
}

// startLocked boots s again on its writable disk: Start, and resuming after a host
// reboot. s.op held.
func (d *Driver) startLocked(ctx context.Context, s *sandbox) error {
	id := s.id
	rec, err := state.Load(s.paths.Dir)
	if err != nil {
		return fmt.Errorf("vm sandbox %q: %w", id, err)
	}
	if rec.Error != nil {
		return fmt.Errorf("vm sandbox %q was never provisioned (%s): delete and create it again: %w", id, rec.Error.Message, drivers.ErrFailedPrecondition)
	}
	d.killLeftovers(s)
	s.mu.Lock()
	s.steps, s.runnerSteps = []wire.HostStep{{Phase: "driver", At: time.Now().UTC()}}, nil
	s.mu.Unlock()
	if err := d.refreshSpec(ctx, s, rec); err != nil {
		return fmt.Errorf("vm sandbox %q: %w", id, err)
	}
	if _, err := state.Update(s.paths.Dir, func(r *state.Record) error { r.Stopped = false; return nil }); err != nil {
		return fmt.Errorf("vm sandbox %q: %w", id, err)
	}
	d.log.Info("starting VM sandbox", "sandbox_id", id)
	return d.boot(s)
}

// Delete implements drivers.Driver: kills the VM and its runner and removes every file
// of the sandbox.
func (d *Driver) Delete(ctx context.Context, id, _ string) (bool, error) {
	s, err := d.lookup(id)
	if errors.Is(err, drivers.ErrNotFound) {
		return false, nil
	}
	s.mu.Lock()
	if s.phase == phaseDeleting {
		s.mu.Unlock()
		return false, nil
	}
	s.setPhase(phaseDeleting, "Deleting", "")
	provCancel, provDone := s.provCancel, s.provDone
	s.mu.Unlock()
	d.emit(s)
	d.log.Info("deleting VM sandbox", "sandbox_id", id)

	if provCancel != nil {
		provCancel()
		<-provDone
	}
	// Kill through the runner first (it reaps QEMU and writes its tombstone), then make
	// sure by signal.
	if d.runnerAlive(s) {
		kctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		if err := runner.NewClient(s.paths.ControlSocket).Kill(kctx); err != nil {
			d.log.Warn("ask runner to kill the VM", "sandbox_id", id, "err", err)
		}
		cancel()
		d.waitRunner(s, 10*time.Second)
		if d.runnerAlive(s) {
			d.signalRunner(s, syscall.SIGTERM)
			d.waitRunner(s, 5*time.Second)
		}
	}
	s.mu.Lock()
	monCancel, monDone := s.monCancel, s.monDone
	s.mu.Unlock()
	if monCancel != nil {
		monCancel()
		<-monDone
	}
	d.killLeftovers(s)
	if err := d.releaseGPUs(ctx, id); err != nil {
		return false, err
	}
	if err := removeDir(s.paths.Dir); err != nil {
		return false, fmt.Errorf("vm sandbox %q: remove %s: %w", id, s.paths.Dir, err)
	}
	if run := state.RunDir(s.paths.Dir); run != s.paths.Dir {
		if err := removeDir(run); err != nil {
			return false, fmt.Errorf("vm sandbox %q: remove %s: %w", id, run, err)
		}
		_ = os.Remove(filepath.Dir(run)) // the driver's runtime dir, once no sandbox is left
	}
	d.mu.Lock()
	delete(d.sandboxes, id)
	d.mu.Unlock()
	d.hub.mu.Lock()
	d.hub.publishLocked(&computev1.WatchSandboxesEvent{Payload: &computev1.WatchSandboxesEvent_Deleted{
		Deleted: &computev1.WatchSandboxesDeletedEvent{SandboxId: id},
	}})
	d.hub.mu.Unlock()
	d.log.Info("VM sandbox deleted", "sandbox_id", id)
	return true, nil
}

// removeDir removes a sandbox directory without following symlinks: if dir itself is
// a symlink only the link goes; os.RemoveAll unlinks symlinks inside, never their targets.
func removeDir(dir string) error {
	st, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if st.Mode()&fs.ModeSymlink != 0 {
		return os.Remove(dir)
	}
	return os.RemoveAll(dir)
}

func (d *Driver) runnerAlive(s *sandbox) bool {
	s.mu.Lock()
	pid, start := s.runnerPID, s.runnerStart
	s.mu.Unlock()
	return pid != 0 && state.SameProcess(pid, start)
}

func (d *Driver) waitRunner(s *sandbox, max time.Duration) {
	deadline := time.Now().Add(max)
	for d.runnerAlive(s) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
}

func (d *Driver) signalRunner(s *sandbox, sig syscall.Signal) {
	s.mu.Lock()
	pid, start := s.runnerPID, s.runnerStart
	s.mu.Unlock()
	state.Signal(pid, start, sig)
}

// killLeftovers SIGKILLs whatever still runs for s: the runner, every process of the
// runner's session (QEMU, the vsock backend) and the recorded QEMU pid.
func (d *Driver) killLeftovers(s *sandbox) {
	rec, err := state.Load(s.paths.Dir)
	if err != nil {
		return
	}
	if hostRebooted(rec, d.bootID) {
		// Recorded in an earlier boot of the host: nothing of ours runs any more, and
		// those pids (and session ids) may now be other programs'.
		return
	}
	var pids []int
	if rec.RunnerPID != 0 {
		pids = append(pids, procstat.SessionMembers(rec.RunnerPID, rec.RunnerStart)...)
	}
	if rec.VMMPID != 0 && state.SameProcess(rec.VMMPID, rec.VMMStart) {
		pids = append(pids, rec.VMMPID)
	}
	for _, pid := range pids {
		d.log.Info("killing leftover process", "sandbox_id", s.id, "pid", pid)
		syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range pids {
		for time.Now().Before(deadline) {
			st, err := procstat.Read(pid)
			if err != nil || st.State == 'Z' || st.State == 'X' {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
