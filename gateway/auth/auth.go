// Package auth decides who is calling the gateway and whether that caller may call the
// method. It runs as gRPC interceptors at the API edge: every method has a mode
// (unauthenticated, user, sandbox, dual) as in the wire protocol's authorization table;
// the resolved Principal travels in the context for handlers that must check which
// sandbox a sandbox principal may name.
package auth

import (
	"context"
	"log/slog"
	"strconv"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/openshell/openshell/gateway/pki"
)

// Mode is a method's authorization mode.
type Mode int

const (
	// Unauthenticated methods accept anyone.
	Unauthenticated Mode = iota
	// User methods accept only a user principal (mTLS client cert or local-dev user).
	User
	// Sandbox methods accept only a sandbox principal (gateway-minted bearer token).
	Sandbox
	// Dual methods accept either.
	Dual
)

const svc = "/openshell.v1.OpenShell/"

// Modes maps full method names to modes. Methods not listed default to User, so a
// newly added RPC is never accidentally open.
var Modes = map[string]Mode{
	svc + "Health":                Unauthenticated,
	svc + "ConnectSupervisor":     Sandbox,
	svc + "RelayStream":           Sandbox,
	svc + "ReportMainProcessExit": Sandbox,
	svc + "PushSandboxLogs":       Sandbox,
	svc + "GetSandboxConfig":      Dual,
	// The rest of the service (handlers refuse what a sandbox may not do on a dual RPC).
	svc + "ReportPolicyStatus":            Sandbox,
	svc + "GetSandboxProviderEnvironment": Sandbox,
	svc + "SubmitPolicyAnalysis":          Sandbox,
	svc + "IssueSandboxToken":             Sandbox,
	svc + "RefreshSandboxToken":           Sandbox,
	svc + "UpdateConfig":                  Dual,
	svc + "GetDraftPolicy":                Dual,
}

// ModeOf returns the mode for a full method name.
func ModeOf(fullMethod string) Mode {
	if strings.HasPrefix(fullMethod, "/grpc.reflection.") || strings.HasPrefix(fullMethod, "/grpc.health.") {
		return Unauthenticated
	}
	if m, ok := Modes[fullMethod]; ok {
		return m
	}
	return User
}

// Kind is the kind of principal.
type Kind int

const (
	Anonymous Kind = iota
	UserKind
	SandboxKind
)

// Principal is the authenticated caller.
type Principal struct {
	Kind Kind
	// Name is the user's certificate common name, "local-dev", or the sandbox id.
	Name string
	// SandboxID is set for sandbox principals.
	SandboxID string
}

type ctxKey struct{}

// FromContext returns the caller's principal (Anonymous when none).
func FromContext(ctx context.Context) Principal {
	p, _ := ctx.Value(ctxKey{}).(Principal)
	return p
}

// WithPrincipal attaches p to ctx (for tests and in-process callers).
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, ctxKey{}, p)
}

// TokenVerifier verifies a sandbox bearer token and returns the sandbox id it is bound to.
type TokenVerifier interface {
	Verify(token string) (sandboxID string, err error)
}

// Authenticator resolves principals. When LocalDev is true (plaintext gateway with no
// user authentication) every request without a bearer token is the local-dev user.
type Authenticator struct {
	Tokens   TokenVerifier
	LocalDev bool
	Log      *slog.Logger
}

// LocalPeer is the AuthInfo of a connection on the gateway's Unix socket: the caller
// as the kernel reports it (SO_PEERCRED), and whether the socket's policy makes that
// caller an administrator. The transport decides Admin; Authenticate only obeys it.
type LocalPeer struct {
	credentials.CommonAuthInfo
	UID, GID uint32
	Admin    bool
	// Refusal tells a caller who is not an administrator why, and the fix.
	Refusal string
	// SandboxID is set when the connection arrived on that sandbox's own socket: it
	// serves only that sandbox's supervisor (its token, the supervisor RPCs), never an
	// administrator, whatever the caller's uid.
	SandboxID string
}

// AuthType implements credentials.AuthInfo.
func (LocalPeer) AuthType() string { return "unix-peercred" }

// Authenticate returns the principal for an incoming call, or an UNAUTHENTICATED status
// when a credential was presented but is invalid.
func (a *Authenticator) Authenticate(ctx context.Context) (Principal, error) {
	// A local caller the socket's policy does not admit is refused outright, token or
	// not: the socket is for this machine's administrators only.
	local, isLocal := LocalPeer{}, false
	if p, ok := peer.FromContext(ctx); ok {
		local, isLocal = p.AuthInfo.(LocalPeer)
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if isLocal && local.SandboxID != "" {
		return a.sandboxSocket(md, local.SandboxID)
	}
	if isLocal && !local.Admin {
		return Principal{}, status.Error(codes.PermissionDenied, local.Refusal)
	}
	// Only the first authorization value counts (gRPC clients send one).
	tok, present, err := bearerToken(md)
	if err != nil {
		return Principal{}, err
	}
	if present {
		return a.sandboxPrincipal(tok)
	}
	if isLocal {
		return Principal{Kind: UserKind, Name: "uid:" + strconv.FormatUint(uint64(local.UID), 10)}, nil
	}
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			if cn, ok := pki.VerifiedUser(&ti.State); ok {
				if cn == "" {
					cn = "mtls-user"
				}
				return Principal{Kind: UserKind, Name: cn}, nil
			}
		}
	}
	if a.LocalDev {
		return Principal{Kind: UserKind, Name: "local-dev"}, nil
	}
	return Principal{}, nil
}

// bearerToken returns the first authorization value's bearer token ("" when none).
func bearerToken(md metadata.MD) (string, bool, error) {
	vals := md.Get("authorization")
	if len(vals) == 0 {
		return "", false, nil
	}
	tok, ok := strings.CutPrefix(vals[0], "Bearer ")
	if !ok {
		tok, ok = strings.CutPrefix(vals[0], "bearer ")
	}
	if !ok || strings.TrimSpace(tok) == "" {
		return "", true, status.Error(codes.Unauthenticated, "authorization metadata must be 'Bearer <token>'")
	}
	return strings.TrimSpace(tok), true, nil
}

// sandboxSocket authenticates a call on a sandbox's own socket: the socket says
// which sandbox is calling, and the token must say the same.
func (a *Authenticator) sandboxSocket(md metadata.MD, socketID string) (Principal, error) {
	tok, present, err := bearerToken(md)
	if err != nil {
		return Principal{}, err
	}
	if !present {
		return Principal{}, status.Errorf(codes.Unauthenticated, "the gateway socket of sandbox %s serves only that sandbox's supervisor: send its sandbox token", socketID)
	}
	p, err := a.sandboxPrincipal(tok)
	if err != nil {
		return Principal{}, err
	}
	if p.SandboxID != socketID {
		return Principal{}, status.Errorf(codes.PermissionDenied, "a token of sandbox %s may not be used on the gateway socket of sandbox %s", p.SandboxID, socketID)
	}
	return p, nil
}

// sandboxPrincipal verifies a sandbox token and names the sandbox it was minted for.
func (a *Authenticator) sandboxPrincipal(tok string) (Principal, error) {
	if a.Tokens == nil {
		return Principal{}, status.Error(codes.Unauthenticated, "this gateway does not accept bearer tokens")
	}
	id, err := a.Tokens.Verify(tok)
	if err != nil {
		return Principal{}, status.Errorf(codes.Unauthenticated, "sandbox token rejected: %v", err)
	}
	return Principal{Kind: SandboxKind, Name: id, SandboxID: id}, nil
}

// socketMethod refuses, on a sandbox's own socket, every method a supervisor does
// not call: that socket is no way into the rest of the API.
func socketMethod(ctx context.Context, method string) error {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	lp, ok := p.AuthInfo.(LocalPeer)
	if !ok || lp.SandboxID == "" {
		return nil
	}
	if m := ModeOf(method); m == Sandbox || m == Dual {
		return nil
	}
	return status.Errorf(codes.PermissionDenied, "%s is not served on the gateway socket of sandbox %s, which carries only its supervisor's calls; use the gateway's API endpoint with user credentials", method, lp.SandboxID)
}

// authorize applies the method's mode to the principal.
func authorize(method string, p Principal) error {
	switch ModeOf(method) {
	case Unauthenticated:
		return nil
	case User:
		switch p.Kind {
		case UserKind:
			return nil
		case SandboxKind:
			return status.Errorf(codes.PermissionDenied, "%s is a user method; sandbox tokens may not call it", method)
		}
	case Sandbox:
		switch p.Kind {
		case SandboxKind:
			return nil
		case UserKind:
			return status.Errorf(codes.PermissionDenied, "%s may only be called by a sandbox supervisor with its sandbox token", method)
		}
	case Dual:
		if p.Kind != Anonymous {
			return nil
		}
	}
	return status.Errorf(codes.Unauthenticated, "%s needs credentials: a client certificate issued by this gateway (see `openshell gateway start`), or a sandbox token", method)
}

// RequireSandbox returns PERMISSION_DENIED when a sandbox principal names a sandbox other
// than its own. User principals may name any sandbox.
func RequireSandbox(ctx context.Context, sandboxID string) error {
	p := FromContext(ctx)
	if p.Kind == SandboxKind && p.SandboxID != sandboxID {
		return status.Errorf(codes.PermissionDenied, "sandbox token for %q may not act on sandbox %q", p.SandboxID, sandboxID)
	}
	return nil
}

type sandboxIDGetter interface{ GetSandboxId() string }

// Unary is the unary server interceptor.
func (a *Authenticator) Unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := socketMethod(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	if ModeOf(info.FullMethod) == Unauthenticated {
		return handler(ctx, req)
	}
	p, err := a.Authenticate(ctx)
	if err != nil {
		return nil, err
	}
	if err := authorize(info.FullMethod, p); err != nil {
		return nil, err
	}
	ctx = WithPrincipal(ctx, p)
	if g, ok := req.(sandboxIDGetter); ok && p.Kind == SandboxKind {
		if err := RequireSandbox(ctx, g.GetSandboxId()); err != nil {
			return nil, err
		}
	}
	return handler(ctx, req)
}

type wrappedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (w *wrappedStream) Context() context.Context { return w.ctx }

// Stream is the streaming server interceptor. Stream handlers check sandbox ids
// themselves (the id arrives in a later message) with RequireSandbox.
func (a *Authenticator) Stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := socketMethod(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	if ModeOf(info.FullMethod) == Unauthenticated {
		return handler(srv, ss)
	}
	p, err := a.Authenticate(ss.Context())
	if err != nil {
		return err
	}
	if err := authorize(info.FullMethod, p); err != nil {
		return err
	}
	return handler(srv, &wrappedStream{ServerStream: ss, ctx: WithPrincipal(ss.Context(), p)})
}
