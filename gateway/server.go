// Package gateway is the openshell control plane: the openshell.v1.OpenShell gRPC
// service (sandbox lifecycle, supervisor sessions and relays, logs, SSH sessions), the
// reconcile loop against the compute driver, and the server wiring (TLS, auth
// interceptors, error mapping at the API edge).
package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/gateway/auth"
	"github.com/openshell/openshell/gateway/hub"
	"github.com/openshell/openshell/gateway/secrets"
	"github.com/openshell/openshell/gateway/store"
	"github.com/openshell/openshell/gateway/validation"
	"github.com/openshell/openshell/internal/version"
)

// Version is the gateway's version string (internal/version, set with -ldflags -X).
var Version = version.Version

// Tokens mints and verifies sandbox tokens (gateway/token.Issuer implements it).
type Tokens interface {
	Mint(sandboxID string, ttl time.Duration) (string, error)
	Verify(tok string) (sandboxID string, err error)
}

// RelayOpener opens a relay with a target to one sandbox's supervisor.
type RelayOpener = func(ctx context.Context, target *openshellv1.RelayOpen) (io.ReadWriteCloser, error)

// ExecFunc runs a non-interactive command over relays it opens (gateway/sshrelay.Exec).
type ExecFunc func(ctx context.Context, open RelayOpener, req *openshellv1.ExecSandboxRequest, send func(*openshellv1.ExecSandboxEvent) error) error

// InteractiveFunc runs an interactive session over relays it opens (gateway/sshrelay.Interactive).
type InteractiveFunc func(ctx context.Context, open RelayOpener, first *openshellv1.ExecSandboxRequest,
	recv func() (*openshellv1.ExecSandboxInput, error), send func(*openshellv1.ExecSandboxEvent) error) error

// Options configure a Server.
type Options struct {
	Store      store.Store
	Driver     drivers.Driver
	DriverName string
	Tokens     Tokens
	Log        *slog.Logger
	// TokenTTL is the sandbox token lifetime (0 = 365 days: the token is minted once
	// at create and there is no refresh RPC in the supported subset).
	TokenTTL time.Duration
	// ReconcileInterval is the period of the full driver List (0 = 10 s).
	ReconcileInterval time.Duration
	// SSHSessionTTL is the lifetime of CreateSshSession tokens (0 = 1 h).
	SSHSessionTTL time.Duration
	// Public endpoint reported by CreateSshSession.
	GatewayHost   string
	GatewayPort   uint32
	GatewayScheme string
	// Exec and Interactive implement exec over the supervisor's SSH server; nil =
	// UNIMPLEMENTED.
	Exec        ExecFunc
	Interactive InteractiveFunc
	// MaxRelaysPerSandbox caps concurrent relays (0 = hub default).
	MaxRelaysPerSandbox int
	// RelayOpenTimeout bounds the wait for a supervisor to claim a relay (0 = 10 s).
	RelayOpenTimeout time.Duration
	// SessionReturnWait bounds how long an exec, forward or transfer to a running
	// sandbox waits for its supervisor to reconnect after losing its session (0 = 10 s).
	SessionReturnWait time.Duration
	// LogLines is the per-sandbox log ring size (0 = 10000).
	LogLines int
	// Secrets encrypts provider credentials at rest; nil = provider RPCs answer
	// FAILED_PRECONDITION.
	Secrets *secrets.Box
	// SandboxSockets gives each sandbox a gateway socket of its own, whose directory
	// the driver mounts (DriverSandboxSpec.gateway_socket_dir); nil = none, the
	// sandboxes dial the TCP endpoint.
	SandboxSockets SandboxSockets
	// SharedStore says other gateway replicas write the same store. Their writes wake
	// no watcher of this gateway, so a watch re-reads its sandbox every
	// sharedStoreRecheck as well as on this gateway's own writes.
	SharedStore bool
}

// sharedStoreRecheck is how often a watch re-reads a record other replicas may write:
// the pace at which a replica learns of the others' sessions, too.
const sharedStoreRecheck = time.Second

// KindSandbox is the store kind of sandbox records.
const KindSandbox = kindSandbox

// SandboxSockets opens and removes per-sandbox gateway sockets.
type SandboxSockets interface {
	// Open creates and serves the sandbox's socket; it returns its host directory.
	Open(id string) (dir string, err error)
	// Remove closes the socket and removes its directory.
	Remove(id string)
}

// Server implements openshellv1.OpenShellServer.
type Server struct {
	openshellv1.UnimplementedOpenShellServer
	opts  Options
	st    store.Store
	drv   drivers.Driver
	log   *slog.Logger
	hub   *hub.Hub
	caps  *computev1.GetCapabilitiesResponse
	logs  *logBook
	watch *notifier
	// services is where the services listener serves (nil: none yet).
	services atomic.Pointer[serviceRouting]

	wg       sync.WaitGroup
	cancel   context.CancelFunc
	stopping chan struct{}
	stopOnce sync.Once
}

var _ openshellv1.OpenShellServer = (*Server)(nil)

// New builds a server and reads the driver's capabilities (mandatory). Call Start to
// run the reconcile loop, Close to stop it.
func New(ctx context.Context, o Options) (*Server, error) {
	switch {
	case o.Store == nil:
		return nil, errors.New("gateway: Options.Store is nil")
	case o.Driver == nil:
		return nil, errors.New("gateway: Options.Driver is nil; select a compute driver")
	case o.Tokens == nil:
		return nil, errors.New("gateway: Options.Tokens is nil")
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.TokenTTL == 0 {
		o.TokenTTL = 365 * 24 * time.Hour
	}
	if o.ReconcileInterval == 0 {
		o.ReconcileInterval = 10 * time.Second
	}
	if o.SSHSessionTTL == 0 {
		o.SSHSessionTTL = time.Hour
	}
	if o.GatewayScheme == "" {
		o.GatewayScheme = "https"
	}
	if o.GatewayHost == "" {
		o.GatewayHost = "127.0.0.1"
	}
	if o.LogLines == 0 {
		o.LogLines = 10000
	}
	caps, err := o.Driver.Capabilities(ctx)
	if err != nil {
		return nil, fmt.Errorf("gateway: compute driver %q capabilities: %w", o.DriverName, err)
	}
	if o.DriverName == "" {
		o.DriverName = caps.GetDriverName()
	}
	s := &Server{opts: o, st: o.Store, drv: o.Driver, log: o.Log.With("driver", o.DriverName), caps: caps,
		logs: newLogBook(o.LogLines), watch: newNotifier(), stopping: make(chan struct{})}
	s.hub = hub.New(hub.Options{Log: s.log, OnChange: s.onSession, MaxRelays: o.MaxRelaysPerSandbox, OpenWait: o.RelayOpenTimeout})
	return s, nil
}

// Hub exposes the session hub (for the exec/forward handlers and tests).
func (s *Server) Hub() *hub.Hub { return s.hub }

// Capabilities returns what the driver reported at startup.
func (s *Server) Capabilities() *computev1.GetCapabilitiesResponse { return s.caps }

// Start reconciles once against the driver (so a restarted gateway lists every
// sandbox with a current phase) and then keeps reconciling in the background.
func (s *Server) Start(ctx context.Context) error {
	if err := s.reconcileOnce(ctx); err != nil {
		s.log.Warn("initial reconcile failed; will retry", "err", err)
	}
	s.sweepRevisions(ctx)
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	s.wg.Add(2)
	go func() { defer s.wg.Done(); s.watchLoop(rctx) }()
	go func() { defer s.wg.Done(); s.listLoop(rctx) }()
	return nil
}

// Close stops the background loops and ends long-lived streams (supervisor sessions,
// watches) so a graceful gRPC stop does not wait for them. It does not close the store
// or the driver.
func (s *Server) Close() error {
	s.stopOnce.Do(func() {
		close(s.stopping)
		s.hub.Shutdown()
	})
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	return nil
}

// Register adds the OpenShell service to a gRPC server.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	openshellv1.RegisterOpenShellServer(r, s)
	s.registerSnapshots(r)
	s.registerPools(r)
}

// NewGRPCServer returns a gRPC server with the auth and error-mapping interceptors
// installed (auth first, so unauthenticated calls never reach a handler).
func NewGRPCServer(a *auth.Authenticator, opts ...grpc.ServerOption) *grpc.Server {
	opts = append(opts,
		grpc.ChainUnaryInterceptor(a.Unary, unaryErrors),
		grpc.ChainStreamInterceptor(a.Stream, streamErrors),
		grpc.MaxRecvMsgSize(1<<20),
		// Supervisors ping every 30 s (also without an active call); the default
		// enforcement (5 min) would answer that with GOAWAY "too_many_pings" and drop
		// every session. Our own pings find dead peers behind idle sessions.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	)
	return grpc.NewServer(opts...)
}

func unaryErrors(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	resp, err := h(ctx, req)
	return resp, toStatus(err)
}

func streamErrors(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	return toStatus(h(srv, ss))
}

// toStatus converts sentinel errors to gRPC codes. This is the only place that does.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codes.Internal
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, drivers.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, store.ErrAlreadyExists), errors.Is(err, drivers.ErrAlreadyExists):
		code = codes.AlreadyExists
	case errors.Is(err, store.ErrInvalid), errors.Is(err, drivers.ErrInvalidArgument), errors.Is(err, validation.ErrInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, store.ErrConflict):
		code = codes.Aborted
	case errors.Is(err, drivers.ErrFailedPrecondition), errors.Is(err, errNotReady):
		code = codes.FailedPrecondition
	case errors.Is(err, drivers.ErrUnavailable), errors.Is(err, hub.ErrNoSession), errors.Is(err, hub.ErrRelayFailed):
		code = codes.Unavailable
	case errors.Is(err, hub.ErrTooManyRelays):
		code = codes.ResourceExhausted
	case errors.Is(err, hub.ErrUnknownChannel), errors.Is(err, hub.ErrBadIdentity):
		code = codes.InvalidArgument
	case errors.Is(err, hub.ErrRefused):
		code = codes.PermissionDenied
	case errors.Is(err, drivers.ErrNotSupported):
		code = codes.Unimplemented
	case errors.Is(err, errUnauthenticated):
		code = codes.Unauthenticated
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	}
	return status.Error(code, err.Error())
}

var (
	errNotReady        = errors.New("sandbox is not ready")
	errUnauthenticated = errors.New("unauthenticated")
)

func invalidf(format string, a ...any) error {
	return fmt.Errorf(format+": %w", append(a, validation.ErrInvalid)...)
}

func resolveWorkspace(ws string) string {
	if ws == "" {
		return "default"
	}
	return ws
}

// ---- record access ----

func (s *Server) load(ctx context.Context, id string) (*record, error) {
	o, err := s.st.Get(ctx, kindSandbox, id)
	if err != nil {
		return nil, err
	}
	return decodeRecord(o)
}

func (s *Server) loadByName(ctx context.Context, ws, name string) (*record, error) {
	if name == "" {
		return nil, invalidf("name is required")
	}
	o, err := s.st.GetByName(ctx, kindSandbox, resolveWorkspace(ws), name)
	if err != nil {
		return nil, err
	}
	return decodeRecord(o)
}

var errNoChange = errors.New("no change")

// mutate applies fn to the current record and writes it with compare-and-swap,
// re-reading and retrying on conflicts until ctx ends. fn returns errNoChange to skip
// the write.
func (s *Server) mutate(ctx context.Context, id string, fn func(r *record) error) (*record, error) {
	for {
		r, err := s.load(ctx, id)
		if err != nil {
			return nil, err
		}
		if err := fn(r); err != nil {
			if errors.Is(err, errNoChange) {
				return r, nil
			}
			return nil, err
		}
		s.stampPhase(r)
		ready := finishTimeline(r, time.Now())
		data, err := r.encode()
		if err != nil {
			return nil, err
		}
		o := r.obj.Clone()
		o.Data = data
		o.Labels = r.sb.GetMetadata().GetLabels()
		nobj, err := s.st.Update(ctx, o)
		if errors.Is(err, store.ErrConflict) {
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("sandbox %s: %w", id, err)
			case <-time.After(5 * time.Millisecond):
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		r.obj = nobj
		s.watch.notify(id)
		if ready {
			tl := r.sb.GetStatus().GetCreateTimeline()
			s.log.Info("sandbox ready", "sandbox_id", id, "sandbox", r.sb.GetMetadata().GetName(),
				"create_ms", (tl[len(tl)-1].GetAtUnixUs()-tl[0].GetAtUnixUs())/1000, "timeline", timelineLog(tl))
		}
		return r, nil
	}
}

// stampPhase stores the derived phase in the record so the database is meaningful on
// its own; readers still re-derive it (sessions are live state).
func (s *Server) stampPhase(r *record) {
	if r.sb.Status == nil {
		r.sb.Status = &openshellv1.SandboxStatus{}
	}
	var cond *openshellv1.SandboxCondition
	r.sb.Status.Phase, cond = derivePhase(s.phaseInput(r))
	keepTransitionTime(r.sb.Status.Conditions, cond)
	r.sb.Status.Conditions = append(publicConditions(r.backend, cond), policyCondition(r)...)
	// A finished start clears the intent.
	if r.intent == intentStarting && r.sb.Status.Phase == openshellv1.SandboxPhase_SANDBOX_PHASE_READY {
		r.intent = intentNone
	}
	if r.intent == intentStopping && r.sb.Status.Phase == openshellv1.SandboxPhase_SANDBOX_PHASE_STOPPED {
		r.intent = intentStopped
	}
}

func (s *Server) phaseInput(r *record) phaseInput {
	return phaseInput{backend: r.backend, intent: r.intent, exited: r.sb.GetStatus().ExitCode != nil,
		failureReason: r.failureReason, failureMessage: r.failureMessage, connected: s.hub.Connected(r.id())}
}

// view renders the public Sandbox for a record with the phase derived now.
func (s *Server) view(r *record) *openshellv1.Sandbox {
	return s.viewOwned(r, cloneSandbox(r.sb))
}

// viewOwned is view without the copy, for records decoded only to be returned.
func (s *Server) viewOwned(r *record, sb *openshellv1.Sandbox) *openshellv1.Sandbox {
	md := sb.GetMetadata()
	md.ResourceVersion = r.obj.ResourceVersion
	md.CreatedAtMs = r.obj.CreatedAtMs
	if sb.Status == nil {
		sb.Status = &openshellv1.SandboxStatus{}
	}
	st := sb.Status
	phase, cond := derivePhase(s.phaseInput(r))
	keepTransitionTime(st.Conditions, cond)
	st.Phase = phase
	st.Conditions = append(publicConditions(r.backend, cond), policyCondition(r)...)
	if r.backend != nil {
		st.AgentPod = r.backend.GetInstanceId()
		st.AgentFd = r.backend.GetAgentFd()
		st.SandboxFd = r.backend.GetSandboxFd()
		st.FromPool = r.backend.GetFromPool()
		if n := r.backend.GetSandboxName(); n != "" {
			st.SandboxName = n
		}
	}
	if st.SandboxName == "" {
		st.SandboxName = md.GetName()
	}
	st.CreateTimeline = liveTimeline(r, phase, time.Now())
	return sb
}
