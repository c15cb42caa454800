package supervisor

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/openshell/openshell/api/openshellv1"
	sandboxv1 "github.com/openshell/openshell/api/sandboxv1"
	"github.com/openshell/openshell/supervisor/bootstrap"
	"github.com/openshell/openshell/supervisor/egress"
	"github.com/openshell/openshell/supervisor/policy"
	"github.com/openshell/openshell/supervisor/sandboxuser"
)

const apiPolicy = "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - host: api.example.com\n        port: 443\n"

func TestInitialPolicySources(t *testing.T) {
	gwPol := policy.Default()
	gwPol.NetworkPolicies["gw"] = &policy.NetworkRule{Name: "gw", Endpoints: []policy.Endpoint{{Host: "gw.example.com", Port: 443}}}
	gw := &sandboxv1.GetSandboxConfigResponse{Policy: gwPol.ToProto(), Version: 3}

	// Bootstrap YAML wins over the gateway's policy.
	p, src, err := initialPolicy(&bootstrap.Config{PolicyYAML: []byte(apiPolicy)}, gw)
	if err != nil || src != "bootstrap policy" || p.NetworkPolicies["api"] == nil {
		t.Fatalf("yaml: %v %q %v", p, src, err)
	}
	// Then the policy file.
	f := filepath.Join(t.TempDir(), "p.yaml")
	os.WriteFile(f, []byte(apiPolicy), 0o644)
	if p, src, err = initialPolicy(&bootstrap.Config{PolicyFile: f}, gw); err != nil || !strings.HasPrefix(src, "policy file") || p.NetworkPolicies["api"] == nil {
		t.Fatalf("file: %v %q %v", p, src, err)
	}
	// Then the gateway's.
	if p, src, err = initialPolicy(&bootstrap.Config{}, gw); err != nil || src != "gateway policy" || p.NetworkPolicies["gw"] == nil {
		t.Fatalf("gateway: %v %q %v", p, src, err)
	}
	// Else the default: no network at all.
	if p, src, err = initialPolicy(&bootstrap.Config{}, nil); err != nil || src != "default policy" || len(p.NetworkPolicies) != 0 {
		t.Fatalf("default: %v %q %v", p, src, err)
	}
	// A broken policy is an error naming the field, never silently replaced.
	if _, _, err = initialPolicy(&bootstrap.Config{PolicyYAML: []byte("version: 1\nfoo: 1\n")}, gw); err == nil || !strings.Contains(err.Error(), "foo") {
		t.Fatalf("bad yaml: %v", err)
	}
	if _, _, err = initialPolicy(&bootstrap.Config{PolicyFile: filepath.Join(t.TempDir(), "missing")}, nil); err == nil {
		t.Fatal("missing policy file accepted")
	}
}

// reportConn records ReportPolicyStatus calls (the only RPC the watcher's apply makes).
type reportConn struct {
	mu      sync.Mutex
	reports []*pb.ReportPolicyStatusRequest
	unimpl  bool
}

func (r *reportConn) Invoke(_ context.Context, method string, args, _ any, _ ...grpc.CallOption) error {
	if r.unimpl {
		return status.Error(codes.Unimplemented, "no")
	}
	if method != pb.OpenShell_ReportPolicyStatus_FullMethodName {
		return status.Errorf(codes.Unimplemented, "unexpected %s", method)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reports = append(r.reports, args.(*pb.ReportPolicyStatusRequest))
	return nil
}

func (r *reportConn) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, status.Error(codes.Unimplemented, "no streams")
}

func (r *reportConn) last() *pb.ReportPolicyStatusRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.reports) == 0 {
		return nil
	}
	return r.reports[len(r.reports)-1]
}

func TestPolicyWatcherApply(t *testing.T) {
	prx, err := egress.New(egress.Config{Policy: policy.MustCompile(policy.Default())})
	if err != nil {
		t.Fatal(err)
	}
	defer prx.Close()
	rc := &reportConn{}
	w := &policyWatcher{cc: rc, id: "sb", prx: prx, version: 1, log: slog.Default()}
	allowed := func() bool { return prx.Policy().Decide("api.example.com", 443, "/usr/bin/curl").Allow }
	valid, err := policy.Parse([]byte(apiPolicy))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()

	// Same version: nothing happens.
	w.apply(ctx, &sandboxv1.GetSandboxConfigResponse{Policy: valid.ToProto(), Version: 1})
	if allowed() || rc.last() != nil {
		t.Fatal("an unchanged version was applied")
	}
	// A new valid version is applied and reported.
	w.apply(ctx, &sandboxv1.GetSandboxConfigResponse{Policy: valid.ToProto(), Version: 2})
	if !allowed() {
		t.Fatal("version 2 not applied")
	}
	if r := rc.last(); r == nil || r.GetVersion() != 2 || (r.GetStatus() != pb.PolicyStatus_POLICY_STATUS_LOADED) || r.GetSandboxId() != "sb" {
		t.Fatalf("report %v", r)
	}
	bad := valid.ToProto()
	bad.NetworkPolicies["api"].Endpoints[0].Port = 0
	// retain_last_valid keeps version 2's rules and reports the failure.
	w.apply(ctx, &sandboxv1.GetSandboxConfigResponse{Policy: bad, Version: 3, PolicyValidationFailureMode: "retain_last_valid"})
	if !allowed() {
		t.Fatal("retain_last_valid dropped the last valid policy")
	}
	if r := rc.last(); r.GetVersion() != 3 || (r.GetStatus() == pb.PolicyStatus_POLICY_STATUS_LOADED) || r.GetLoadError() == "" {
		t.Fatalf("report %v", r)
	}
	// fail_closed (also the default for an empty mode) denies everything.
	w.apply(ctx, &sandboxv1.GetSandboxConfigResponse{Policy: bad, Version: 4})
	if allowed() {
		t.Fatal("fail_closed kept the old rules")
	}
	if r := rc.last(); r.GetVersion() != 4 || (r.GetStatus() == pb.PolicyStatus_POLICY_STATUS_LOADED) {
		t.Fatalf("report %v", r)
	}
	// A gateway without the status RPC: the policy still applies.
	rc.unimpl = true
	w.apply(ctx, &sandboxv1.GetSandboxConfigResponse{Policy: valid.ToProto(), Version: 5})
	if !allowed() || w.version != 5 {
		t.Fatal("version 5 not applied without the status RPC")
	}
}

func TestEventShipperLevels(t *testing.T) {
	type line struct{ level, target, msg string }
	var got []line
	ship := eventShipper(func(level, target, msg string, fields map[string]string) {
		got = append(got, line{level, target, msg})
		if fields["host"] != "x.example.com" || fields["port"] != "443" {
			t.Errorf("fields %v", fields)
		}
	})
	ship(egress.Event{Action: "deny", Method: "CONNECT", Host: "x.example.com", Port: 443, Binary: "/usr/bin/curl", Reason: "not listed"})
	ship(egress.Event{Action: "allow", Method: "CONNECT", Host: "x.example.com", Port: 443, Rule: "r"})
	if len(got) != 2 || got[0].level != "WARN" || got[1].level != "INFO" || got[0].target != "egress" {
		t.Fatalf("lines %+v", got)
	}
	if !strings.Contains(got[0].msg, "x.example.com:443") || !strings.Contains(got[0].msg, "/usr/bin/curl") {
		t.Fatalf("deny line does not name host/port/binary: %q", got[0].msg)
	}
}

func TestProcessChange(t *testing.T) {
	tests := []struct {
		start, next policy.Process
		want        []string // substrings; none = no change
	}{
		{start: policy.Default().Process, next: policy.Process{}},
		{start: policy.Process{}, next: policy.Default().Process},
		{start: policy.Process{RunAsUser: "agent"}, next: policy.Process{RunAsUser: "agent", RunAsGroup: "sandbox"}},
		{start: policy.Process{RunAsUser: "agent"}, next: policy.Process{RunAsUser: "other"},
			want: []string{`process.run_as_user from "agent" to "other"`}},
		{start: policy.Default().Process, next: policy.Process{RunAsUser: "agent"},
			want: []string{`process.run_as_user from the default to "agent"`}},
		{start: policy.Process{RunAsUser: "agent", RunAsGroup: "tools"}, next: policy.Process{},
			want: []string{`process.run_as_user from "agent" to the default`, `process.run_as_group from "tools" to the default`}},
	}
	for _, tc := range tests {
		got := processChange(tc.start, tc.next)
		if (got == "") != (len(tc.want) == 0) {
			t.Fatalf("processChange(%+v, %+v) = %q, want %q", tc.start, tc.next, got, tc.want)
		}
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Fatalf("processChange(%+v, %+v) = %q, lacks %q", tc.start, tc.next, got, w)
			}
		}
	}
}

// TestPolicyWatcherProcessChange: a version that asks for another account gets its
// network rules applied but is reported as not applied, naming the field; the same
// account spelled the default way is an ordinary update.
func TestPolicyWatcherProcessChange(t *testing.T) {
	prx, err := egress.New(egress.Config{Policy: policy.MustCompile(policy.Default())})
	if err != nil {
		t.Fatal(err)
	}
	defer prx.Close()
	rc := &reportConn{}
	user := &sandboxuser.User{Name: "agent", UID: 2345, GID: 2345}
	w := &policyWatcher{cc: rc, id: "sb", prx: prx, version: 1, log: slog.Default(),
		process: policy.Process{RunAsUser: "agent"}, user: user}
	allowed := func() bool { return prx.Policy().Decide("api.example.com", 443, "/usr/bin/curl").Allow }
	next, err := policy.Parse([]byte(apiPolicy + "process:\n  run_as_user: other\n"))
	if err != nil {
		t.Fatal(err)
	}
	w.apply(t.Context(), &sandboxv1.GetSandboxConfigResponse{Policy: next.ToProto(), Version: 2})
	if !allowed() {
		t.Fatal("the network rules of a version that changes process were not applied")
	}
	r := rc.last()
	if r == nil || r.GetVersion() != 2 || (r.GetStatus() == pb.PolicyStatus_POLICY_STATUS_LOADED) {
		t.Fatalf("report %v, want version 2 not applied", r)
	}
	for _, s := range []string{`process.run_as_user from "agent" to "other"`, "agent (uid 2345, gid 2345)", "network_policies were applied", "recreate the sandbox"} {
		if !strings.Contains(r.GetLoadError(), s) {
			t.Fatalf("report error %q lacks %q", r.GetLoadError(), s)
		}
	}
	if w.version != 2 {
		t.Fatalf("watcher version %d: the refused version would be re-applied on every poll", w.version)
	}
	// The same account again (group spelled as the default): applied.
	same, err := policy.Parse([]byte(apiPolicy + "process:\n  run_as_user: agent\n  run_as_group: sandbox\n"))
	if err != nil {
		t.Fatal(err)
	}
	w.apply(t.Context(), &sandboxv1.GetSandboxConfigResponse{Policy: same.ToProto(), Version: 3})
	if r := rc.last(); r.GetVersion() != 3 || (r.GetStatus() != pb.PolicyStatus_POLICY_STATUS_LOADED) || r.GetLoadError() != "" {
		t.Fatalf("report %v, want version 3 applied", r)
	}
}
