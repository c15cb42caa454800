package policycmds

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/openshell/openshell/api/datamodelv1"
	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/api/sandboxv1"
	"github.com/openshell/openshell/supervisor/policy"
)

// miniGateway serves GetSandbox, GetSandboxConfig and UpdateConfig for one
// sandbox "box" over real gRPC; its "supervisor" confirms a new version (applied)
// 700 ms after it is stored, or never when stuck is set.
type miniGateway struct {
	pb.UnimplementedOpenShellServer
	mu      sync.Mutex
	pol     *sandboxv1.SandboxPolicy
	version uint32
	applied uint32
	noCfg   bool
	stuck   bool
	noExt   bool
	refuse  string // the supervisor's load error for every new version
}

func (g *miniGateway) GetSandboxPolicyStatus(_ context.Context, r *pb.GetSandboxPolicyStatusRequest) (*pb.GetSandboxPolicyStatusResponse, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	rev := &pb.SandboxPolicyRevision{Version: r.GetVersion(), Status: pb.PolicyStatus_POLICY_STATUS_PENDING}
	if g.refuse != "" {
		rev.Status, rev.LoadError = pb.PolicyStatus_POLICY_STATUS_FAILED, g.refuse
	}
	return &pb.GetSandboxPolicyStatusResponse{Revision: rev, ActiveVersion: g.applied}, nil
}

func (g *miniGateway) UpdateConfig(_ context.Context, r *pb.UpdateConfigRequest) (*pb.UpdateConfigResponse, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.noExt {
		return nil, status.Error(codes.Unimplemented, "method UpdateConfig not implemented")
	}
	if r.GetName() != "box" {
		return nil, status.Errorf(codes.NotFound, "sandbox %q not found", r.GetName())
	}
	if u := r.GetPolicy().GetProcess().GetRunAsUser(); u != "" && u != "sandbox" {
		return nil, status.Error(codes.FailedPrecondition, "sandbox box: the policy changes [process], which apply only when a sandbox is created")
	}
	g.pol, g.version = r.GetPolicy(), g.version+1
	v := g.version
	if !g.stuck {
		time.AfterFunc(700*time.Millisecond, func() {
			g.mu.Lock()
			g.applied = v
			g.mu.Unlock()
		})
	}
	return &pb.UpdateConfigResponse{Version: v, PolicyHash: "def"}, nil
}

func (g *miniGateway) GetSandbox(_ context.Context, r *pb.GetSandboxRequest) (*pb.SandboxResponse, error) {
	if r.GetName() != "box" {
		return nil, status.Errorf(codes.NotFound, "sandbox %q not found", r.GetName())
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return &pb.SandboxResponse{Sandbox: &pb.Sandbox{Metadata: &datamodelv1.ObjectMeta{Id: "sb-1", Name: "box"}, Spec: &pb.SandboxSpec{Policy: g.pol},
		Status: &pb.SandboxStatus{CurrentPolicyVersion: g.applied}}}, nil
}

func (g *miniGateway) GetSandboxConfig(_ context.Context, r *sandboxv1.GetSandboxConfigRequest) (*sandboxv1.GetSandboxConfigResponse, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.noCfg {
		return nil, status.Error(codes.PermissionDenied, "config:read not granted")
	}
	if r.GetSandboxId() != "sb-1" {
		return nil, status.Error(codes.NotFound, "no such sandbox")
	}
	return &sandboxv1.GetSandboxConfigResponse{Policy: g.pol, Version: g.version, PolicyHash: "abc"}, nil
}

func setup(t *testing.T) (*miniGateway, DialFunc) {
	g := &miniGateway{pol: policy.Default().ToProto(), version: 3, applied: 3}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	pb.RegisterOpenShellServer(gs, g)
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	return g, func(ctx context.Context) (*grpc.ClientConn, error) {
		return grpc.NewClient("passthrough:///"+ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
}

func run(t *testing.T, gw func(context.Context) (Gateway, error), args ...string) (string, error) {
	root := &cobra.Command{Use: "openshell", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(Command(gw))
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

func writeFile(t *testing.T, s string) string {
	p := filepath.Join(t.TempDir(), "policy.yaml")
	os.WriteFile(p, []byte(s), 0o644)
	return p
}

const newPolicy = `version: 1
filesystem_policy:
  include_workdir: true
  read_only: [/usr]
network_policies:
  pypi:
    endpoints:
      - {host: pypi.org, port: 443}
    binaries: [{path: /usr/bin/pip*}]
`

func TestGet(t *testing.T) {
	g, dial := setup(t)
	out, err := run(t, GRPCFrom(dial), "policy", "get", "box")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "# sandbox box, policy version 3, sha256 abc") || !strings.Contains(out, "include_workdir: true") {
		t.Fatalf("get: %s", out)
	}
	p, err := policy.Parse([]byte(out))
	if err != nil || !p.Filesystem.IncludeWorkdir {
		t.Fatalf("get output does not parse back: %v", err)
	}
	out, err = run(t, GRPCFrom(dial), "policy", "get", "box", "-o", "json")
	if err != nil || !strings.Contains(strings.ReplaceAll(out, " ", ""), `"includeWorkdir":true`) { // protojson varies its spacing on purpose
		t.Fatalf("json: %v %s", err, out)
	}
	// GetSandboxConfig refused: fall back to the creation spec.
	g.mu.Lock()
	g.noCfg = true
	g.mu.Unlock()
	out, err = run(t, GRPCFrom(dial), "policy", "get", "box")
	if err != nil || strings.Contains(out, "policy version") || !strings.Contains(out, "version: 1") {
		t.Fatalf("fallback: %v %s", err, out)
	}
	if _, err := run(t, GRPCFrom(dial), "policy", "get", "nope"); err == nil || !strings.Contains(err.Error(), `sandbox "nope" not found`) {
		t.Fatalf("unknown sandbox: %v", err)
	}
}

func TestSet(t *testing.T) {
	g, dial := setup(t)
	file := writeFile(t, newPolicy)
	// An older gateway without the RPC: a clear refusal.
	g.mu.Lock()
	g.noExt = true
	g.mu.Unlock()
	_, err := run(t, GRPCFrom(dial), "policy", "set", "box", "--policy", file)
	if !errors.Is(err, ErrSetUnsupported) {
		t.Fatalf("want ErrSetUnsupported, got %v", err)
	}
	g.mu.Lock()
	g.noExt = false
	g.mu.Unlock()
	// --wait returns once GetSandbox reports the supervisor applied the new version.
	t0 := time.Now()
	out, err := run(t, GRPCFrom(dial), "policy", "set", "box", "--policy", file, "--wait")
	if err != nil || !strings.Contains(out, "policy version 4 in effect") || time.Since(t0) < 500*time.Millisecond {
		t.Fatalf("set --wait: %v %q after %v", err, out, time.Since(t0))
	}
	out, _ = run(t, GRPCFrom(dial), "policy", "get", "box")
	if !strings.Contains(out, "pypi.org") {
		t.Fatalf("new policy not visible: %s", out)
	}
	// Without --wait: the stored version, immediately.
	out, err = run(t, GRPCFrom(dial), "policy", "set", "box", "--policy", file)
	if err != nil || !strings.Contains(out, "policy version 5 stored") {
		t.Fatalf("set: %v %q", err, out)
	}
	// A supervisor that never confirms: --wait fails clearly at the timeout.
	g.mu.Lock()
	g.stuck = true
	g.mu.Unlock()
	_, err = run(t, GRPCFrom(dial), "policy", "set", "box", "--policy", file, "--wait", "--timeout", "1200ms")
	if err == nil || !strings.Contains(err.Error(), "has not confirmed it within 1.2s") || !strings.Contains(err.Error(), "policy version 6 is stored") {
		t.Fatalf("stuck supervisor: %v", err)
	}
	// A supervisor that refuses the version: --wait stops at once with its reason.
	g.mu.Lock()
	g.refuse = "network_policies.pypi: bad rule"
	g.mu.Unlock()
	t0 = time.Now()
	_, err = run(t, GRPCFrom(dial), "policy", "set", "box", "--policy", file, "--wait", "--timeout", "30s")
	if err == nil || !strings.Contains(err.Error(), "did not apply it: network_policies.pypi: bad rule") || time.Since(t0) > 5*time.Second {
		t.Fatalf("refused version: %v after %v", err, time.Since(t0))
	}
	g.mu.Lock()
	g.refuse = ""
	g.mu.Unlock()
	// Gateway refusals come through with their message.
	_, err = run(t, GRPCFrom(dial), "policy", "set", "nope", "--policy", file)
	if err == nil || !strings.Contains(err.Error(), `sandbox "nope" not found`) {
		t.Fatalf("unknown sandbox: %v", err)
	}
	g.mu.Lock()
	g.stuck = false
	g.mu.Unlock()
	_, err = run(t, GRPCFrom(dial), "policy", "set", "box", "--policy", writeFile(t, strings.Replace(newPolicy, "network_policies:", "process:\n  run_as_user: agent\nnetwork_policies:", 1)))
	if err == nil || !strings.Contains(err.Error(), "apply only when a sandbox is created") {
		t.Fatalf("static change: %v", err)
	}
}

func TestSetRejectsInvalidFileLocally(t *testing.T) {
	_, dial := setup(t)
	file := writeFile(t, "version: 1\nnetwork_policies:\n  x:\n    endpoints:\n      - host: a.*.com\n        port: 443\n")
	_, err := run(t, GRPCFrom(dial), "policy", "set", "box", "--policy", file)
	if err == nil || !strings.Contains(err.Error(), "network_policies.x.endpoints[0].host (line 5): wildcard allowed only as the first label") {
		t.Fatalf("got %v", err)
	}
	out, err := run(t, GRPCFrom(dial), "policy", "validate", writeFile(t, newPolicy))
	if err != nil || !strings.Contains(out, "valid") {
		t.Fatalf("validate: %v %s", err, out)
	}
	if _, err := run(t, GRPCFrom(dial), "policy", "set", "box"); err == nil {
		t.Fatal("set without --policy accepted")
	}
}
