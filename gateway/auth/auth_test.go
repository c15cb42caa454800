package auth

import (
	"context"
	"errors"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

type tokens map[string]string

func (t tokens) Verify(tok string) (string, error) {
	if id, ok := t[tok]; ok {
		return id, nil
	}
	return "", errors.New("bad signature")
}

func TestModes(t *testing.T) {
	for m, want := range map[string]Mode{
		"/openshell.v1.OpenShell/Health":                Unauthenticated,
		"/grpc.health.v1.Health/Check":                  Unauthenticated,
		"/openshell.v1.OpenShell/CreateSandbox":         User,
		"/openshell.v1.OpenShell/SomeFutureRPC":         User,
		"/openshell.v1.OpenShell/ConnectSupervisor":     Sandbox,
		"/openshell.v1.OpenShell/PushSandboxLogs":       Sandbox,
		"/openshell.v1.OpenShell/GetSandboxConfig":      Dual,
		"/openshell.v1.OpenShell/ForwardTcp":            User,
		"/openshell.v1.OpenShell/ReportMainProcessExit": Sandbox,
	} {
		if got := ModeOf(m); got != want {
			t.Errorf("ModeOf(%s) = %v, want %v", m, got, want)
		}
	}
}

func TestAuthenticate(t *testing.T) {
	a := &Authenticator{Tokens: tokens{"good": "sb-1"}}
	ctxWith := func(v string) context.Context {
		return metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", v))
	}
	p, err := a.Authenticate(ctxWith("Bearer good"))
	if err != nil || p.Kind != SandboxKind || p.SandboxID != "sb-1" {
		t.Fatalf("good token = %+v, %v", p, err)
	}
	for _, v := range []string{"Bearer bad", "Basic Zm9v", "Bearer ", "good"} {
		if _, err := a.Authenticate(ctxWith(v)); status.Code(err) != codes.Unauthenticated {
			t.Errorf("authorization %q: %v, want UNAUTHENTICATED", v, err)
		}
	}
	// No credentials: anonymous, unless local-dev.
	if p, err := a.Authenticate(context.Background()); err != nil || p.Kind != Anonymous {
		t.Errorf("no credentials = %+v, %v", p, err)
	}
	a.LocalDev = true
	if p, _ := a.Authenticate(context.Background()); p.Kind != UserKind {
		t.Errorf("local-dev = %+v", p)
	}
	// Mode checks.
	if err := authorize("/openshell.v1.OpenShell/ListSandboxes", Principal{Kind: SandboxKind}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("sandbox on user RPC: %v", err)
	}
	if err := authorize("/openshell.v1.OpenShell/RelayStream", Principal{Kind: UserKind}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("user on sandbox RPC: %v", err)
	}
	if err := authorize("/openshell.v1.OpenShell/GetSandboxConfig", Principal{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("anonymous on dual RPC: %v", err)
	}
	ctx := WithPrincipal(context.Background(), Principal{Kind: SandboxKind, SandboxID: "a"})
	if RequireSandbox(ctx, "a") != nil || status.Code(RequireSandbox(ctx, "b")) != codes.PermissionDenied {
		t.Error("RequireSandbox")
	}
}
