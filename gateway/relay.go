package gateway

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/gateway/hub"
	"github.com/openshell/openshell/gateway/sshrelay"
	"github.com/openshell/openshell/gateway/store"
	"github.com/openshell/openshell/gateway/validation"
)

// requireReady loads a sandbox by id and fails with FAILED_PRECONDITION unless READY.
// A running sandbox whose supervisor had a session and has none now is waited for,
// up to Options.SessionReturnWait, while it stays so: its supervisor redials on its
// own (after a gateway restart, within a second or two), and a command sent in that
// window runs instead of failing. A sandbox that leaves that state meanwhile (stopped,
// deleted, failed) is answered at once with its new phase.
func (s *Server) requireReady(ctx context.Context, id string) (*record, error) {
	if id == "" {
		return nil, invalidf("sandbox_id is required")
	}
	var (
		changed  <-chan struct{}
		deadline <-chan time.Time
		poll     <-chan time.Time
		start    time.Time
	)
	for {
		r, err := s.load(ctx, id)
		if err != nil {
			return nil, err
		}
		p, cond := derivePhase(s.phaseInput(r))
		if p == openshellv1.SandboxPhase_SANDBOX_PHASE_READY {
			return r, nil
		}
		name := r.sb.GetMetadata().GetName()
		if !reconnecting(r, cond) {
			return nil, fmt.Errorf("sandbox %s is %s, not READY; wait for it (openshell sandbox watch %s): %w",
				name, phaseName(p), name, errNotReady)
		}
		if changed == nil {
			// Subscribed before the next look, so a change in between still wakes it.
			ch, unsubscribe := s.watch.subscribe(id)
			defer unsubscribe()
			wait := s.opts.SessionReturnWait
			if wait <= 0 {
				wait = defaultSessionReturnWait
			}
			t := time.NewTimer(wait)
			defer t.Stop()
			// A session held by another replica is not announced here: looked for now and then.
			tick := time.NewTicker(250 * time.Millisecond)
			defer tick.Stop()
			changed, deadline, poll, start = ch, t.C, tick.C, time.Now()
			continue
		}
		select {
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		case <-deadline:
			return nil, fmt.Errorf("sandbox %s is %s, not READY: its supervisor had a session and did not reconnect within %v; see `openshell sandbox logs %s`: %w",
				name, phaseName(p), time.Since(start).Round(time.Millisecond), name, errNotReady)
		case <-changed:
		case <-poll:
		}
	}
}

// defaultSessionReturnWait is Options.SessionReturnWait's default.
const defaultSessionReturnWait = 10 * time.Second

// reconnecting reports whether sandbox r runs and its supervisor, which had a
// session before (it recorded its main process's instance), has none now.
func reconnecting(r *record, cond *openshellv1.SandboxCondition) bool {
	return cond.GetReason() == drivers.ReasonSupervisorNotConnected && r.sb.GetStatus().GetMainProcessInstanceId() != ""
}

func phaseName(p openshellv1.SandboxPhase) string {
	n := p.String()
	if len(n) > len("SANDBOX_PHASE_") {
		return n[len("SANDBOX_PHASE_"):]
	}
	return n
}

func validateExec(req *openshellv1.ExecSandboxRequest) error {
	if req.GetSandboxId() == "" {
		return invalidf("sandbox_id is required")
	}
	if len(req.GetCommand()) == 0 {
		return invalidf("command is required (argv, at least one element)")
	}
	if err := validation.Env("environment", req.GetEnvironment()); err != nil {
		return err
	}
	if strings.ContainsRune(req.GetWorkdir(), 0) {
		return invalidf("workdir contains a NUL byte")
	}
	if req.GetTty() {
		if err := sshrelay.CheckWindow(req.GetCols(), req.GetRows()); err != nil {
			return invalidf("%v", err)
		}
	}
	return validation.Command("command", req.GetCommand())
}

// relayOpener opens relays to one sandbox's supervisor for an exec; closing the
// returned conn ends its relay.
func (s *Server) relayOpener(sandboxID string) RelayOpener {
	return func(ctx context.Context, target *openshellv1.RelayOpen) (io.ReadWriteCloser, error) {
		return s.hub.OpenRelay(ctx, sandboxID, target)
	}
}

func (s *Server) ExecSandbox(req *openshellv1.ExecSandboxRequest, stream openshellv1.OpenShell_ExecSandboxServer) error {
	if s.opts.Exec == nil {
		return status.Error(codes.Unimplemented, "exec is not available in this gateway build")
	}
	if err := validateExec(req); err != nil {
		return err
	}
	ctx := stream.Context()
	if _, err := s.requireReady(ctx, req.GetSandboxId()); err != nil {
		return err
	}
	return s.opts.Exec(ctx, s.relayOpener(req.GetSandboxId()), req, stream.Send)
}

func (s *Server) ExecSandboxInteractive(stream openshellv1.OpenShell_ExecSandboxInteractiveServer) error {
	if s.opts.Interactive == nil {
		return status.Error(codes.Unimplemented, "interactive exec is not available in this gateway build")
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	start := first.GetStart()
	if start == nil {
		return invalidf("the first ExecSandboxInteractive frame must be start")
	}
	if err := validateExec(start); err != nil {
		return err
	}
	ctx := stream.Context()
	if _, err := s.requireReady(ctx, start.GetSandboxId()); err != nil {
		return err
	}
	return s.opts.Interactive(ctx, s.relayOpener(start.GetSandboxId()), start, stream.Recv, stream.Send)
}

// ---- SSH sessions ----

type sshSession struct {
	SandboxID   string `json:"sandbox_id"`
	ExpiresAtMs int64  `json:"expires_at_ms"`
}

func tokenKey(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

func (s *Server) CreateSshSession(ctx context.Context, req *openshellv1.CreateSshSessionRequest) (*openshellv1.CreateSshSessionResponse, error) {
	if req.GetSandboxId() == "" {
		return nil, invalidf("sandbox_id is required")
	}
	r, err := s.load(ctx, req.GetSandboxId())
	if err != nil {
		return nil, err
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, err
	}
	tok := base64.RawURLEncoding.EncodeToString(raw[:])
	exp := time.Now().Add(s.opts.SSHSessionTTL).UnixMilli()
	data, _ := json.Marshal(sshSession{SandboxID: r.id(), ExpiresAtMs: exp})
	key := tokenKey(tok)
	// Only the token's hash is stored: a leaked database does not leak live sessions.
	if _, err := s.st.Create(ctx, &store.Object{Kind: kindSSHSession, ID: key, Name: key, Workspace: r.obj.Workspace, Data: data}); err != nil {
		return nil, err
	}
	s.pruneSSHSessions(ctx)
	return &openshellv1.CreateSshSessionResponse{SandboxId: r.id(), Token: tok, GatewayHost: s.opts.GatewayHost,
		GatewayPort: s.opts.GatewayPort, GatewayScheme: s.opts.GatewayScheme, ExpiresAtMs: exp,
		HostKeyFingerprint: s.hub.HostKeyFingerprint(r.id())}, nil
}

// pruneSSHSessions drops expired session records (best effort).
func (s *Server) pruneSSHSessions(ctx context.Context) {
	objs, err := s.st.List(ctx, kindSSHSession, store.ListOptions{AllWorkspaces: true})
	if err != nil {
		return
	}
	now := time.Now().UnixMilli()
	for _, o := range objs {
		var ss sshSession
		if json.Unmarshal(o.Data, &ss) == nil && ss.ExpiresAtMs < now {
			_ = s.st.Delete(ctx, kindSSHSession, o.ID, o.ResourceVersion)
		}
	}
}

func (s *Server) RevokeSshSession(ctx context.Context, req *openshellv1.RevokeSshSessionRequest) (*openshellv1.RevokeSshSessionResponse, error) {
	if req.GetToken() == "" {
		return nil, invalidf("token is required")
	}
	err := s.st.Delete(ctx, kindSSHSession, tokenKey(req.GetToken()), 0)
	if errors.Is(err, store.ErrNotFound) {
		return &openshellv1.RevokeSshSessionResponse{Revoked: false}, nil
	}
	if err != nil {
		return nil, err
	}
	return &openshellv1.RevokeSshSessionResponse{Revoked: true}, nil
}

// checkSSHToken verifies a session token for a sandbox.
func (s *Server) checkSSHToken(ctx context.Context, sandboxID, tok string) error {
	if tok == "" {
		return fmt.Errorf("ssh target needs authorization_token = a token from CreateSshSession: %w", errUnauthenticated)
	}
	o, err := s.st.Get(ctx, kindSSHSession, tokenKey(tok))
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("ssh session token is unknown or revoked; create a new one (openshell sandbox ssh-config): %w", errUnauthenticated)
	}
	if err != nil {
		return err
	}
	var ss sshSession
	if err := json.Unmarshal(o.Data, &ss); err != nil {
		return err
	}
	if ss.SandboxID != sandboxID {
		return fmt.Errorf("ssh session token belongs to another sandbox: %w", errUnauthenticated)
	}
	if time.Now().UnixMilli() > ss.ExpiresAtMs {
		return fmt.Errorf("ssh session token expired at %s; create a new one (openshell sandbox ssh-config): %w",
			time.UnixMilli(ss.ExpiresAtMs).UTC().Format(time.RFC3339), errUnauthenticated)
	}
	return nil
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

func (s *Server) ForwardTcp(stream openshellv1.OpenShell_ForwardTcpServer) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	init := first.GetInit()
	if init == nil {
		return invalidf("the first ForwardTcp frame must be init")
	}
	id := init.GetSandboxId()
	if id == "" {
		return invalidf("init.sandbox_id is required")
	}
	open := &openshellv1.RelayOpen{ServiceId: init.GetServiceId()}
	switch t := init.GetTarget().(type) {
	case *openshellv1.TcpForwardInit_Tcp:
		host, port := t.Tcp.GetHost(), t.Tcp.GetPort()
		if !isLoopbackHost(host) {
			return invalidf("init.tcp.host %q is not a loopback address; only 127.0.0.1, ::1 or localhost inside the sandbox can be forwarded", host)
		}
		if port == 0 || port > 65535 {
			return invalidf("init.tcp.port %d is out of range 1-65535", port)
		}
		open.Target = &openshellv1.RelayOpen_Tcp{Tcp: &openshellv1.TcpRelayTarget{Host: host, Port: port}}
	case *openshellv1.TcpForwardInit_Ssh:
		if err := s.checkSSHToken(ctx, id, init.GetAuthorizationToken()); err != nil {
			return err
		}
		open.Target = &openshellv1.RelayOpen_Ssh{Ssh: &openshellv1.SshRelayTarget{}}
	case *openshellv1.TcpForwardInit_Transfer:
		// A transfer reaches the sandbox as far as an SSH session would: same token.
		if err := s.checkSSHToken(ctx, id, init.GetAuthorizationToken()); err != nil {
			return err
		}
		if err := validateTransfer(t.Transfer); err != nil {
			return err
		}
		open.Target = &openshellv1.RelayOpen_Transfer{Transfer: t.Transfer}
	default:
		return invalidf("init.target must be ssh, tcp or transfer")
	}
	if _, err := s.requireReady(ctx, id); err != nil {
		return err
	}
	conn, err := s.hub.OpenRelay(ctx, id, open)
	if err != nil {
		return err
	}
	defer conn.Close()
	return hub.Pump(ctx, conn,
		func() ([]byte, error) { f, err := stream.Recv(); return f.GetData(), err },
		func(d []byte) error {
			return stream.Send(&openshellv1.TcpForwardFrame{Payload: &openshellv1.TcpForwardFrame_Data{Data: d}})
		})
}

func validateTransfer(t *openshellv1.TransferRelayTarget) error {
	switch d := t.GetDirection(); d {
	case openshellv1.TransferRelayTarget_DIRECTION_UPLOAD, openshellv1.TransferRelayTarget_DIRECTION_DOWNLOAD:
	default:
		return invalidf("init.transfer.direction %v: use DIRECTION_UPLOAD or DIRECTION_DOWNLOAD", d)
	}
	if t.GetPath() == "" || strings.ContainsRune(t.GetPath(), 0) {
		return invalidf("init.transfer.path must name a path in the sandbox, without NUL bytes")
	}
	return nil
}
