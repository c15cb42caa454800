package drivertest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
)

// MemDriverName is what MemDriver reports as its driver name.
const MemDriverName = "mem"

// Op names a MemDriver operation for failure injection.
type Op string

const (
	OpCapabilities Op = "Capabilities"
	OpValidate     Op = "ValidateCreate"
	OpCreate       Op = "Create"
	OpGet          Op = "Get"
	OpList         Op = "List"
	OpStop         Op = "Stop"
	OpStart        Op = "Start"
	OpDelete       Op = "Delete"
	OpWatch        Op = "Watch"
)

// MemDriver is an in-memory drivers.Driver for tests of the gateway and of
// the gRPC adapter. It is test-only: it starts nothing, and users cannot
// select it. Sandboxes report Ready=False/Starting on create and start, and
// Ready=True after the ready delay; stop reports Suspended=True at once.
type MemDriver struct {
	mu         sync.Mutex
	readyDelay time.Duration
	failures   map[Op]error
	sandboxes  map[string]*memSandbox
	specs      map[string]*computev1.DriverSandboxSpec
	watchers   map[*memWatcher]struct{}
	workspaces map[string]bool
	listenReqs []*computev1.GatewayListenerRequirement
	closed     bool
}

type memSandbox struct {
	sb    *computev1.DriverSandbox // observation: spec without token
	timer *time.Timer
}

var (
	_ drivers.Driver           = (*MemDriver)(nil)
	_ drivers.ListenerRequirer = (*MemDriver)(nil)
	_ drivers.WorkspaceManager = (*MemDriver)(nil)
)

// NewMemDriver returns an empty MemDriver whose sandboxes become Ready 20 ms
// after create/start.
func NewMemDriver() *MemDriver {
	return &MemDriver{
		readyDelay: 20 * time.Millisecond,
		failures:   map[Op]error{},
		sandboxes:  map[string]*memSandbox{},
		specs:      map[string]*computev1.DriverSandboxSpec{},
		watchers:   map[*memWatcher]struct{}{},
		workspaces: map[string]bool{},
	}
}

// SetReadyDelay sets how long later creates/starts stay Starting. A negative
// delay means never: the test moves them with SetConditions.
func (m *MemDriver) SetReadyDelay(d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.readyDelay = d
}

// FailOn makes every later call of op return err (wrap a drivers sentinel to
// pick the gRPC code); nil clears it.
func (m *MemDriver) FailOn(op Op, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err == nil {
		delete(m.failures, op)
		return
	}
	m.failures[op] = err
}

// SetListenerRequirements sets what ListenerRequirements returns.
func (m *MemDriver) SetListenerRequirements(reqs []*computev1.GatewayListenerRequirement) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.listenReqs = reqs
}

// Emit sends ev to every current watcher, as a platform would.
func (m *MemDriver) Emit(ev *computev1.WatchSandboxesEvent) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.broadcastLocked(ev)
}

// SetConditions replaces a sandbox's conditions (e.g. to simulate a crash
// with ReadyCondition(false, "ContainerExited", ...)), cancels a pending
// ready transition and emits the new observation.
func (m *MemDriver) SetConditions(id string, conds ...*computev1.DriverCondition) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.sandboxes[id]
	if !ok {
		return fmt.Errorf("sandbox %s: %w", id, drivers.ErrNotFound)
	}
	s.stopTimer()
	s.sb.Status.Conditions = conds
	m.emitSandboxLocked(s)
	return nil
}

// Spec returns the spec a sandbox was created with, including the sandbox
// token that observations never echo; nil when unknown.
func (m *MemDriver) Spec(id string) *computev1.DriverSandboxSpec {
	m.mu.Lock()
	defer m.mu.Unlock()
	return proto.CloneOf(m.specs[id])
}

// Workspaces returns the workspaces currently ensured.
func (m *MemDriver) Workspaces() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for ws := range m.workspaces {
		out = append(out, ws)
	}
	slices.Sort(out)
	return out
}

func (m *MemDriver) check(op Op) error {
	if m.closed {
		return fmt.Errorf("mem driver is closed: %w", drivers.ErrUnavailable)
	}
	return m.failures[op]
}

func (m *MemDriver) Capabilities(context.Context) (*computev1.GetCapabilitiesResponse, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(OpCapabilities); err != nil {
		return nil, err
	}
	return &computev1.GetCapabilitiesResponse{DriverName: MemDriverName, DriverVersion: "test", DefaultImage: "mem.invalid/sandbox:latest"}, nil
}

func (m *MemDriver) ValidateCreate(_ context.Context, sb *computev1.DriverSandbox) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(OpValidate); err != nil {
		return err
	}
	return drivers.ValidateSandbox(sb)
}

func (m *MemDriver) Create(_ context.Context, sb *computev1.DriverSandbox) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(OpCreate); err != nil {
		return err
	}
	if err := drivers.ValidateSandbox(sb); err != nil {
		return err
	}
	if _, ok := m.sandboxes[sb.GetId()]; ok {
		return fmt.Errorf("sandbox %s: %w", sb.GetId(), drivers.ErrAlreadyExists)
	}
	m.specs[sb.GetId()] = proto.CloneOf(sb.GetSpec())
	obs := proto.CloneOf(sb)
	obs.Spec.SandboxToken = ""
	obs.Status = &computev1.DriverSandboxStatus{SandboxName: sb.GetName(), InstanceId: "mem-" + sb.GetId()}
	s := &memSandbox{sb: obs}
	m.sandboxes[sb.GetId()] = s
	m.startLocked(s)
	return nil
}

// startLocked reports Starting and schedules the transition to Ready.
func (m *MemDriver) startLocked(s *memSandbox) {
	s.stopTimer()
	s.sb.Status.Conditions = []*computev1.DriverCondition{drivers.ReadyCondition(false, drivers.ReasonStarting, "starting")}
	m.emitSandboxLocked(s)
	if m.readyDelay < 0 {
		return
	}
	var t *time.Timer
	t = time.AfterFunc(m.readyDelay, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if s.timer != t || m.sandboxes[s.sb.GetId()] != s {
			return // superseded by stop, delete or SetConditions
		}
		s.timer = nil
		s.sb.Status.Conditions = []*computev1.DriverCondition{drivers.ReadyCondition(true, drivers.ReasonRunning, "running")}
		m.emitSandboxLocked(s)
	})
	s.timer = t
}

func (s *memSandbox) stopTimer() {
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
}

func (m *MemDriver) lookupLocked(id string) (*memSandbox, error) {
	s, ok := m.sandboxes[id]
	if !ok {
		return nil, fmt.Errorf("sandbox %s: %w", id, drivers.ErrNotFound)
	}
	return s, nil
}

func (m *MemDriver) Get(_ context.Context, id, _ string) (*computev1.DriverSandbox, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(OpGet); err != nil {
		return nil, err
	}
	s, err := m.lookupLocked(id)
	if err != nil {
		return nil, err
	}
	return proto.CloneOf(s.sb), nil
}

func (m *MemDriver) List(context.Context) ([]*computev1.DriverSandbox, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(OpList); err != nil {
		return nil, err
	}
	out := make([]*computev1.DriverSandbox, 0, len(m.sandboxes))
	for _, s := range m.sandboxes {
		out = append(out, proto.CloneOf(s.sb))
	}
	slices.SortFunc(out, func(a, b *computev1.DriverSandbox) int { return strings.Compare(a.GetId(), b.GetId()) })
	return out, nil
}

func (m *MemDriver) Stop(_ context.Context, id, _ string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(OpStop); err != nil {
		return err
	}
	s, err := m.lookupLocked(id)
	if err != nil {
		return err
	}
	s.stopTimer()
	s.sb.Status.Conditions = []*computev1.DriverCondition{
		drivers.ReadyCondition(false, drivers.ReasonContainerStopped, "stopped"),
		drivers.SuspendedCondition(true, drivers.ReasonStopped, "stopped on request"),
	}
	m.emitSandboxLocked(s)
	return nil
}

func (m *MemDriver) Start(_ context.Context, id, _ string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(OpStart); err != nil {
		return err
	}
	s, err := m.lookupLocked(id)
	if err != nil {
		return err
	}
	m.startLocked(s)
	return nil
}

func (m *MemDriver) Delete(_ context.Context, id, _ string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(OpDelete); err != nil {
		return false, err
	}
	s, ok := m.sandboxes[id]
	if !ok {
		return false, nil
	}
	s.stopTimer()
	delete(m.sandboxes, id)
	delete(m.specs, id)
	m.broadcastLocked(&computev1.WatchSandboxesEvent{Payload: &computev1.WatchSandboxesEvent_Deleted{
		Deleted: &computev1.WatchSandboxesDeletedEvent{SandboxId: id},
	}})
	return true, nil
}

func (m *MemDriver) Watch(ctx context.Context) (<-chan *computev1.WatchSandboxesEvent, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(OpWatch); err != nil {
		return nil, err
	}
	w := &memWatcher{wake: make(chan struct{}, 1), done: make(chan struct{})}
	m.watchers[w] = struct{}{}
	out := make(chan *computev1.WatchSandboxesEvent)
	go func() {
		defer close(out)
		defer func() {
			m.mu.Lock()
			delete(m.watchers, w)
			m.mu.Unlock()
		}()
		for {
			ev, ok := w.pop()
			if !ok {
				select {
				case <-w.wake:
					continue
				case <-w.done:
					return
				case <-ctx.Done():
					return
				}
			}
			select {
			case out <- ev:
			case <-w.done:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

func (m *MemDriver) ListenerRequirements(context.Context) ([]*computev1.GatewayListenerRequirement, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, fmt.Errorf("mem driver is closed: %w", drivers.ErrUnavailable)
	}
	out := make([]*computev1.GatewayListenerRequirement, 0, len(m.listenReqs))
	for _, r := range m.listenReqs {
		out = append(out, proto.CloneOf(r))
	}
	return out, nil
}

func (m *MemDriver) EnsureWorkspace(_ context.Context, ws string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if ws == "" {
		return fmt.Errorf("workspace name is empty: %w", drivers.ErrInvalidArgument)
	}
	m.workspaces[ws] = true
	return nil
}

func (m *MemDriver) DeleteWorkspace(_ context.Context, ws string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.workspaces, ws)
	return nil
}

// Close ends all watches and stops pending transitions. Idempotent.
func (m *MemDriver) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	for _, s := range m.sandboxes {
		s.stopTimer()
	}
	for w := range m.watchers {
		close(w.done)
		delete(m.watchers, w)
	}
	return nil
}

func (m *MemDriver) emitSandboxLocked(s *memSandbox) {
	m.broadcastLocked(&computev1.WatchSandboxesEvent{Payload: &computev1.WatchSandboxesEvent_Sandbox{
		Sandbox: &computev1.WatchSandboxesSandboxEvent{Sandbox: proto.CloneOf(s.sb)},
	}})
}

func (m *MemDriver) broadcastLocked(ev *computev1.WatchSandboxesEvent) {
	for w := range m.watchers {
		w.push(proto.CloneOf(ev))
	}
}

// memWatcher queues events without bound so a slow reader never blocks the
// driver (which holds its lock while broadcasting).
type memWatcher struct {
	mu    sync.Mutex
	queue []*computev1.WatchSandboxesEvent
	wake  chan struct{}
	done  chan struct{}
}

func (w *memWatcher) push(ev *computev1.WatchSandboxesEvent) {
	w.mu.Lock()
	w.queue = append(w.queue, ev)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *memWatcher) pop() (*computev1.WatchSandboxesEvent, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.queue) == 0 {
		return nil, false
	}
	ev := w.queue[0]
	w.queue = w.queue[1:]
	return ev, true
}
