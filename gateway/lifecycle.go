package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/openshell/openshell/api/datamodelv1"
	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/gateway/store"
	"github.com/openshell/openshell/gateway/validation"
	"github.com/openshell/openshell/internal/version"
)

// DriverHeader is the Health response header naming the gateway's compute driver.
const DriverHeader = version.DriverHeader

// DefaultListLimit is ListSandboxes' page size when the request says 0.
const (
	DefaultListLimit = 100
	MaxListLimit     = 10000
)

// driverCallTimeout bounds one driver call made on behalf of an RPC; the call is
// detached from the client's context so a disconnecting client does not leave a
// half-created sandbox behind.
const driverCallTimeout = 5 * time.Minute

func (s *Server) Health(ctx context.Context, _ *openshellv1.HealthRequest) (*openshellv1.HealthResponse, error) {
	// The driver name travels as response metadata: HealthResponse has no field for it
	// and its schema is fixed by the wire protocol.
	_ = grpc.SetHeader(ctx, metadata.Pairs(DriverHeader, s.opts.DriverName))
	return &openshellv1.HealthResponse{Status: openshellv1.ServiceStatus_SERVICE_STATUS_HEALTHY, Version: Version}, nil
}

func (s *Server) CreateSandbox(ctx context.Context, req *openshellv1.CreateSandboxRequest) (*openshellv1.SandboxResponse, error) {
	received := time.Now()
	if err := validation.CreateRequest(req); err != nil {
		return nil, err
	}
	if err := s.checkProviders(ctx, req.GetSpec().GetProviders()); err != nil {
		return nil, err
	}
	ws := resolveWorkspace(req.GetWorkspace())
	name := req.GetName()
	if name == "" {
		name = generateName()
	}
	id := uuid.NewString()
	spec := cloneSpec(req.GetSpec())
	if len(spec.Command) == 0 {
		// No command: the supervisor runs the shell the image has (bash, else sh) on a
		// PTY and keeps the sandbox alive whatever the image holds. Naming a shell here
		// would fail every image without it.
		spec.Tty = true
	}
	if spec.Template == nil {
		spec.Template = &openshellv1.SandboxTemplate{}
	}
	if snap := req.GetFromSnapshot(); snap != "" {
		if err := s.fromSnapshot(ctx, ws, snap, spec); err != nil {
			return nil, err
		}
	}
	if spec.Template.Image == "" {
		spec.Template.Image = s.caps.GetDefaultImage()
	}
	sb := &openshellv1.Sandbox{
		Metadata: &datamodelv1.ObjectMeta{Id: id, Name: name, Workspace: ws,
			Labels: maps.Clone(req.GetLabels()), Annotations: maps.Clone(req.GetAnnotations())},
		Spec: spec,
		Status: &openshellv1.SandboxStatus{SandboxName: name, Phase: openshellv1.SandboxPhase_SANDBOX_PHASE_PROVISIONING,
			CreateTimeline: []*datamodelv1.TimelineStep{{Phase: stepReceived, AtUnixUs: received.UnixMicro()}},
			FromSnapshot:   req.GetFromSnapshot()},
	}
	log := s.log.With("sandbox_id", id, "sandbox", name, "workspace", ws)
	token, err := s.opts.Tokens.Mint(id, s.opts.TokenTTL)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: minting its token: %w", name, err)
	}
	dsb, err := toDriverSandbox(sb, s.opts.DriverName, token)
	if err != nil {
		return nil, err
	}
	dsb.GetSpec().FromSnapshot = req.GetFromSnapshot()
	// The driver checks the request before anything is stored: a create it refuses
	// (a memory limit it cannot honour, an image it cannot use) leaves no record for
	// the user to delete.
	vctx, vcancel := context.WithTimeout(context.WithoutCancel(ctx), driverCallTimeout)
	verr := s.drv.ValidateCreate(vctx, dsb)
	vcancel()
	if verr != nil {
		log.Info("driver refused the sandbox; nothing stored", "err", verr)
		return nil, fmt.Errorf("sandbox %s: driver %s: %w", name, s.opts.DriverName, verr)
	}
	r := &record{sb: sb}
	data, err := r.encode()
	if err != nil {
		return nil, err
	}
	obj, err := s.st.Create(ctx, &store.Object{Kind: kindSandbox, ID: id, Workspace: ws, Name: name, Labels: sb.Metadata.Labels, Data: data})
	if err != nil {
		if errors.Is(err, store.ErrAlreadyExists) {
			return nil, fmt.Errorf("a sandbox named %q already exists in workspace %q; pick another name or delete it first: %w", name, ws, store.ErrAlreadyExists)
		}
		return nil, err
	}
	r.obj = obj
	// Check the providers again now that the sandbox is stored: a DeleteProvider
	// that ran meanwhile either saw this sandbox (and refused) or marked the
	// provider, which this check sees (DeleteProvider explains the protocol).
	if len(spec.GetProviders()) > 0 {
		if err := s.checkProviders(ctx, spec.GetProviders()); err != nil {
			if derr := s.st.Delete(context.WithoutCancel(ctx), kindSandbox, id, obj.ResourceVersion); derr != nil {
				log.Error("could not remove the sandbox record after its provider went away", "err", derr)
			}
			return nil, err
		}
	}
	log.Info("sandbox created; asking the driver to provision it", "image", spec.Template.Image)

	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), driverCallTimeout)
	defer cancel()
	s.gatewayLog(id, "INFO", fmt.Sprintf("sandbox %s accepted; asking driver %s to provision image %s", name, s.opts.DriverName, spec.Template.Image))
	var derr error
	if wm, ok := s.drv.(drivers.WorkspaceManager); ok {
		if err := wm.EnsureWorkspace(dctx, ws); err != nil && !errors.Is(err, drivers.ErrNotSupported) {
			derr = fmt.Errorf("preparing workspace %q: %w", ws, err)
		}
	}
	if derr == nil && s.opts.SandboxSockets != nil {
		if dir, err := s.opts.SandboxSockets.Open(id); err != nil {
			derr = err
		} else {
			dsb.Spec.GatewaySocketDir = dir
		}
	}
	if derr == nil {
		derr = s.drv.Create(dctx, dsb)
	}
	if derr != nil {
		log.Warn("driver refused the sandbox", "err", derr)
		s.gatewayLog(id, "ERROR", "driver refused the sandbox: "+derr.Error())
		if _, merr := s.mutate(dctx, id, func(r *record) error {
			r.failureReason, r.failureMessage = reasonCreateFailed, derr.Error()
			return nil
		}); merr != nil {
			log.Error("could not record the create failure", "err", merr)
		}
		return nil, fmt.Errorf("sandbox %s: driver %s: %w", name, s.opts.DriverName, derr)
	}
	// Pick up the first observation if the driver has one already, unless its event
	// stream got there first: that status is as new or newer (a VM claimed from a warm
	// pool reports running within tens of ms), and this older one must not overwrite it
	// until the next reconcile.
	if ds, err := s.drv.Get(dctx, id, name); err == nil {
		if nr, err := s.mutate(dctx, id, func(r *record) error {
			if r.backend != nil {
				return errNoChange
			}
			r.backend = ds.GetStatus()
			return nil
		}); err == nil && nr != nil {
			r = nr
		}
	} else if r2, err := s.load(dctx, id); err == nil {
		r = r2
	}
	return &openshellv1.SandboxResponse{Sandbox: s.view(r)}, nil
}

func generateName() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "sandbox-" + hex.EncodeToString(b[:])
}

func cloneSpec(sp *openshellv1.SandboxSpec) *openshellv1.SandboxSpec {
	if sp == nil {
		return &openshellv1.SandboxSpec{}
	}
	return cloneSandbox(&openshellv1.Sandbox{Spec: sp}).Spec
}

func (s *Server) GetSandbox(ctx context.Context, req *openshellv1.GetSandboxRequest) (*openshellv1.SandboxResponse, error) {
	r, err := s.loadByName(ctx, req.GetWorkspace(), req.GetName())
	if err != nil {
		return nil, err
	}
	return &openshellv1.SandboxResponse{Sandbox: s.viewOwned(r, r.sb)}, nil
}

func (s *Server) ListSandboxes(ctx context.Context, req *openshellv1.ListSandboxesRequest) (*openshellv1.ListSandboxesResponse, error) {
	if req.GetAllWorkspaces() && req.GetWorkspace() != "" {
		return nil, invalidf("all_workspaces and workspace %q are mutually exclusive; set only one", req.GetWorkspace())
	}
	sel, err := store.ParseSelector(req.GetLabelSelector())
	if err != nil {
		return nil, fmt.Errorf("label_selector: %w", err)
	}
	limit := int(req.GetLimit())
	if limit == 0 {
		limit = DefaultListLimit
	}
	limit = min(limit, MaxListLimit)
	objs, err := s.st.List(ctx, kindSandbox, store.ListOptions{Workspace: resolveWorkspace(req.GetWorkspace()),
		AllWorkspaces: req.GetAllWorkspaces(), Selector: sel, Limit: limit, Offset: int(req.GetOffset())})
	if err != nil {
		return nil, err
	}
	out := make([]*openshellv1.Sandbox, 0, len(objs))
	for _, o := range objs {
		r, err := decodeRecord(o)
		if err != nil {
			s.log.Error("skipping unreadable sandbox record", "sandbox_id", o.ID, "err", err)
			continue
		}
		out = append(out, s.viewOwned(r, r.sb))
	}
	return &openshellv1.ListSandboxesResponse{Sandboxes: out}, nil
}

func (s *Server) DeleteSandbox(ctx context.Context, req *openshellv1.DeleteSandboxRequest) (*openshellv1.DeleteSandboxResponse, error) {
	r, err := s.loadByName(ctx, req.GetWorkspace(), req.GetName())
	if err != nil {
		return nil, err
	}
	id, name := r.id(), r.sb.GetMetadata().GetName()
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), driverCallTimeout)
	defer cancel()
	if _, err := s.mutate(dctx, id, func(r *record) error {
		if r.intent == intentDeleting {
			return errNoChange
		}
		r.intent = intentDeleting
		r.sb.Metadata.DeletionTimestampMs = time.Now().UnixMilli()
		return nil
	}); err != nil {
		return nil, err
	}
	if err := s.finishDelete(dctx, id, name); err != nil {
		return nil, err
	}
	s.log.Info("sandbox deleted", "sandbox_id", id, "sandbox", name)
	return &openshellv1.DeleteSandboxResponse{Deleted: true}, nil
}

// finishDelete removes the sandbox from the driver and then from the store.
func (s *Server) finishDelete(ctx context.Context, id, name string) error {
	if _, err := s.drv.Delete(ctx, id, name); err != nil && !errors.Is(err, drivers.ErrNotFound) {
		return fmt.Errorf("sandbox %s: driver delete failed (it stays DELETING and the gateway retries): %w", name, err)
	}
	if err := s.st.Delete(ctx, kindSandbox, id, 0); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if s.opts.SandboxSockets != nil {
		s.opts.SandboxSockets.Remove(id)
	}
	s.deleteServicesOf(ctx, id)
	s.hub.Drop(id)
	s.watch.notify(id)
	s.logs.forget(id)
	return nil
}

func (s *Server) StopSandbox(ctx context.Context, req *openshellv1.StopSandboxRequest) (*openshellv1.SandboxResponse, error) {
	r, err := s.loadByName(ctx, req.GetWorkspace(), req.GetName())
	if err != nil {
		return nil, err
	}
	id, name := r.id(), r.sb.GetMetadata().GetName()
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), driverCallTimeout)
	defer cancel()
	if req.GetSuspend() && r.intent == intentStopped {
		// The driver knows whether it is suspended already (a no-op) or only stopped.
		if err := s.stopWorkload(dctx, id, name, true); err != nil {
			return nil, driverOpError(name, "suspend", err)
		}
		return &openshellv1.SandboxResponse{Sandbox: s.view(r)}, nil
	}
	if _, err := s.mutate(dctx, id, func(r *record) error {
		switch r.intent {
		case intentDeleting:
			return fmt.Errorf("sandbox %s is being deleted: %w", name, drivers.ErrFailedPrecondition)
		case intentStopped, intentStopping:
			return errNoChange
		}
		r.intent = intentStopping
		return nil
	}); err != nil {
		return nil, err
	}
	if err := s.stopWorkload(dctx, id, name, req.GetSuspend()); err != nil {
		s.revertIntent(dctx, id, intentStopping, intentNone)
		return nil, driverOpError(name, "stop", err)
	}
	// A successful Stop means the workload is stopped.
	r, err = s.mutate(dctx, id, func(r *record) error {
		if r.intent != intentStopping {
			return errNoChange
		}
		r.intent = intentStopped
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &openshellv1.SandboxResponse{Sandbox: s.view(r)}, nil
}

func (s *Server) StartSandbox(ctx context.Context, req *openshellv1.StartSandboxRequest) (*openshellv1.SandboxResponse, error) {
	r, err := s.loadByName(ctx, req.GetWorkspace(), req.GetName())
	if err != nil {
		return nil, err
	}
	id, name := r.id(), r.sb.GetMetadata().GetName()
	prevIntent := r.intent
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), driverCallTimeout)
	defer cancel()
	if _, err := s.mutate(dctx, id, func(r *record) error {
		if r.intent == intentDeleting {
			return fmt.Errorf("sandbox %s is being deleted: %w", name, drivers.ErrFailedPrecondition)
		}
		prevIntent = r.intent
		r.intent = intentStarting
		r.sb.Status.ExitCode = nil
		r.sb.Status.MainProcessInstanceId = ""
		if r.failureReason == "" {
			r.failureMessage = "" // the last exit's message
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if err := s.drv.Start(dctx, id, name); err != nil {
		s.revertIntent(dctx, id, intentStarting, prevIntent)
		return nil, driverOpError(name, "start", err)
	}
	if ds, err := s.drv.Get(dctx, id, name); err == nil {
		if nr, err := s.observe(dctx, id, ds); err == nil && nr != nil {
			r = nr
		}
	} else if r, err = s.load(dctx, id); err != nil {
		return nil, err
	}
	return &openshellv1.SandboxResponse{Sandbox: s.view(r)}, nil
}

// revertIntent undoes a lifecycle intent after the driver refused the operation, so
// the sandbox does not stay STOPPING/STARTING forever.
func (s *Server) revertIntent(ctx context.Context, id, from, to string) {
	if _, err := s.mutate(ctx, id, func(r *record) error {
		if r.intent != from {
			return errNoChange
		}
		r.intent = to
		return nil
	}); err != nil {
		s.log.Warn("could not revert a lifecycle intent", "sandbox_id", id, "err", err)
	}
}

// driverOpError explains a failed stop/start; a workload the driver does not know
// (e.g. its create failed) is a precondition problem, not a missing sandbox.
func driverOpError(name, op string, err error) error {
	if errors.Is(err, drivers.ErrNotFound) {
		return fmt.Errorf("sandbox %s: the compute driver has no workload to %s (did its create fail? see `openshell sandbox get %s`); delete and recreate it: %w",
			name, op, name, drivers.ErrFailedPrecondition)
	}
	return fmt.Errorf("sandbox %s: driver %s: %w", name, op, err)
}

func (s *Server) WatchSandbox(req *openshellv1.WatchSandboxRequest, stream openshellv1.OpenShell_WatchSandboxServer) error {
	ctx := stream.Context()
	id := req.GetId()
	if id == "" {
		return invalidf("id is required (the sandbox's metadata.id; resolve a name with GetSandbox)")
	}
	wake, unsub := s.watch.subscribe(id)
	defer unsub()
	var fol *follower
	if req.GetFollowLogs() || req.GetFollowEvents() {
		f, stop := s.logs.follow(id)
		defer stop()
		fol = f
	}
	r, err := s.load(ctx, id)
	if err != nil {
		return err
	}
	send := func(sb *openshellv1.Sandbox) error {
		return stream.Send(&openshellv1.SandboxStreamEvent{Payload: &openshellv1.SandboxStreamEvent_Sandbox{Sandbox: sb}})
	}
	last := s.view(r)
	if err := send(last); err != nil {
		return err
	}
	terminal := func(p openshellv1.SandboxPhase) bool {
		return p == openshellv1.SandboxPhase_SANDBOX_PHASE_READY || p == openshellv1.SandboxPhase_SANDBOX_PHASE_ERROR
	}
	if req.GetStopOnTerminal() && terminal(last.GetStatus().GetPhase()) {
		return nil
	}
	filter := logFilter{since: req.GetLogSinceMs(), sources: req.GetLogSources(), minLevel: req.GetLogMinLevel()}
	if req.GetFollowLogs() {
		n := int(req.GetLogTailLines())
		if n == 0 {
			n = 200
		}
		lines, _ := s.logs.tail(id, n, filter)
		for _, l := range lines {
			if err := stream.Send(&openshellv1.SandboxStreamEvent{Payload: &openshellv1.SandboxStreamEvent_Log{Log: l}}); err != nil {
				return err
			}
		}
	}
	if req.GetFollowEvents() {
		for _, e := range s.logs.eventTail(id, int(req.GetEventTail())) {
			if err := stream.Send(&openshellv1.SandboxStreamEvent{Payload: &openshellv1.SandboxStreamEvent_Event{Event: e}}); err != nil {
				return err
			}
		}
	}
	if !req.GetFollowStatus() && !req.GetFollowLogs() && !req.GetFollowEvents() && !req.GetStopOnTerminal() {
		return nil
	}
	var logs <-chan *openshellv1.SandboxLogLine
	var events <-chan *openshellv1.PlatformEvent
	var lost <-chan struct{}
	if fol != nil {
		if req.GetFollowLogs() {
			logs, lost = fol.logs, fol.lost
		}
		if req.GetFollowEvents() {
			events = fol.events
		}
	}
	// reread sends the sandbox again if it changed; done once the watch is over.
	reread := func() (done bool, err error) {
		r, err := s.load(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			// Deleted: send a final DELETING snapshot so clients see the end.
			last.Status.Phase = openshellv1.SandboxPhase_SANDBOX_PHASE_DELETING
			if req.GetFollowStatus() {
				_ = send(last)
			}
			return true, nil
		}
		if err != nil {
			return true, err
		}
		cur := s.view(r)
		changed := cur.GetMetadata().GetResourceVersion() != last.GetMetadata().GetResourceVersion() ||
			cur.GetStatus().GetPhase() != last.GetStatus().GetPhase()
		last = cur
		if changed && (req.GetFollowStatus() || req.GetStopOnTerminal()) {
			if err := send(cur); err != nil {
				return true, err
			}
		}
		return req.GetStopOnTerminal() && terminal(cur.GetStatus().GetPhase()), nil
	}
	var recheck <-chan time.Time
	if s.opts.SharedStore {
		t := time.NewTicker(sharedStoreRecheck)
		defer t.Stop()
		recheck = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-s.stopping:
			return status.Error(codes.Unavailable, "the gateway is shutting down; watch again")
		case <-wake:
			if done, err := reread(); done {
				return err
			}
		case <-recheck: // what other replicas wrote wakes nobody here
			if done, err := reread(); done {
				return err
			}
		case l := <-logs:
			if filter.match(l) {
				if err := stream.Send(&openshellv1.SandboxStreamEvent{Payload: &openshellv1.SandboxStreamEvent_Log{Log: l}}); err != nil {
					return err
				}
			}
		case <-lost:
			if err := stream.Send(&openshellv1.SandboxStreamEvent{Payload: &openshellv1.SandboxStreamEvent_Warning{
				Warning: &openshellv1.SandboxStreamWarning{Message: "log lines were dropped because this watcher fell behind"}}}); err != nil {
				return err
			}
		case e := <-events:
			if err := stream.Send(&openshellv1.SandboxStreamEvent{Payload: &openshellv1.SandboxStreamEvent_Event{Event: e}}); err != nil {
				return err
			}
		}
	}
}
