package auth

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// A connection on sandbox sb-1's own socket: only sb-1's token, only supervisor
// RPCs, never an administrator (not even under local-dev).
func TestSandboxSocketBindsTheCaller(t *testing.T) {
	a := &Authenticator{Tokens: tokens{"tok1": "sb-1", "tok2": "sb-2"}, LocalDev: true}
	onSocket := func(auth string) context.Context {
		ctx := peer.NewContext(t.Context(), &peer.Peer{AuthInfo: LocalPeer{SandboxID: "sb-1", Admin: true}})
		if auth != "" {
			ctx = metadata.NewIncomingContext(ctx, metadata.Pairs("authorization", auth))
		}
		return ctx
	}
	if p, err := a.Authenticate(onSocket("Bearer tok1")); err != nil || p.Kind != SandboxKind || p.SandboxID != "sb-1" {
		t.Fatalf("own token = %+v, %v", p, err)
	}
	for _, c := range []struct {
		auth string
		want codes.Code
	}{
		{"Bearer tok2", codes.PermissionDenied}, // another sandbox's valid token
		{"", codes.Unauthenticated},             // no token: not the local user
		{"Bearer forged", codes.Unauthenticated},
	} {
		if _, err := a.Authenticate(onSocket(c.auth)); status.Code(err) != c.want {
			t.Errorf("authorization %q: %v, want %v", c.auth, err, c.want)
		}
	}
	ok := func(context.Context, any) (any, error) { return "ok", nil }
	for m, want := range map[string]codes.Code{
		svc + "ListSandboxes":    codes.PermissionDenied,
		svc + "CreateSandbox":    codes.PermissionDenied,
		svc + "Health":           codes.PermissionDenied,
		svc + "GetSandboxConfig": codes.OK,
		svc + "PushSandboxLogs":  codes.OK,
	} {
		_, err := a.Unary(onSocket("Bearer tok1"), nil, &grpc.UnaryServerInfo{FullMethod: m}, ok)
		if status.Code(err) != want {
			t.Errorf("%s on the sandbox socket: %v, want %v", m, err, want)
		}
	}
}
