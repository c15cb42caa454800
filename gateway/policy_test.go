package gateway_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/api/sandboxv1"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/gateway"
	"github.com/openshell/openshell/gateway/secrets"
	"github.com/openshell/openshell/supervisor/policy"
)

// startExtEnv is startEnv with a secrets key in the test's state dir.
func startExtEnv(t *testing.T) *env {
	t.Helper()
	return startExtEnvAt(t, t.TempDir(), drivertest.NewMemDriver())
}

// startExtEnvAt starts (or restarts) a gateway on dir's database and key.
func startExtEnvAt(t *testing.T, dir string, drv *drivertest.MemDriver) *env {
	t.Helper()
	box, err := secrets.LoadOrCreate(filepath.Join(dir, secrets.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	return startEnvWith(t, dir, drv, 200*time.Millisecond, func(o *gateway.Options) { o.Secrets = box })
}

func networkPolicy(host string) *sandboxv1.SandboxPolicy {
	p := policy.Default().ToProto()
	p.NetworkPolicies = map[string]*sandboxv1.NetworkPolicyRule{"api": {Name: "api",
		Endpoints: []*sandboxv1.NetworkEndpoint{{Host: host, Port: 443}},
		Binaries:  []*sandboxv1.NetworkBinary{{Path: "/usr/bin/curl"}}}}
	return p
}

func TestUpdateConfigBumpsVersion(t *testing.T) {
	e := startExtEnv(t)
	ctx := context.Background()
	sb := e.create("pol")
	id := sb.GetMetadata().GetId()
	sup := e.sandboxClient(id)

	cfg, err := sup.GetSandboxConfig(ctx, &sandboxv1.GetSandboxConfigRequest{SandboxId: id})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.GetVersion() != 1 || cfg.GetPolicySource() != sandboxv1.PolicySource_POLICY_SOURCE_SANDBOX {
		t.Fatalf("initial config: version %d source %v, want 1 SANDBOX", cfg.GetVersion(), cfg.GetPolicySource())
	}

	ue := e.user
	want := networkPolicy("api.example.com")
	resp, err := ue.UpdateConfig(ctx, &openshellv1.UpdateConfigRequest{Name: "pol", Policy: want})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetVersion() != 2 || resp.GetPolicyHash() != policy.Hash(want) {
		t.Fatalf("update: version %d hash %s, want 2 %s", resp.GetVersion(), resp.GetPolicyHash(), policy.Hash(want))
	}
	cfg, err = sup.GetSandboxConfig(ctx, &sandboxv1.GetSandboxConfigRequest{SandboxId: id})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.GetVersion() != 2 || cfg.GetPolicyHash() != resp.GetPolicyHash() || cfg.GetPolicy().GetNetworkPolicies()["api"] == nil {
		t.Fatalf("config after update: version %d hash %s policy %v", cfg.GetVersion(), cfg.GetPolicyHash(), cfg.GetPolicy())
	}
	// The same policy again is no new version.
	again, err := ue.UpdateConfig(ctx, &openshellv1.UpdateConfigRequest{Name: "pol", Policy: want})
	if err != nil || again.GetVersion() != 2 {
		t.Fatalf("identical update: %v, version %d, want 2", err, again.GetVersion())
	}
	// Omitted static sections keep the current ones.
	netOnly := networkPolicy("other.example.com")
	netOnly.Filesystem, netOnly.Landlock, netOnly.Process = nil, &sandboxv1.LandlockPolicy{}, &sandboxv1.ProcessPolicy{}
	third, err := ue.UpdateConfig(ctx, &openshellv1.UpdateConfigRequest{Name: "pol", Policy: netOnly})
	if err != nil || third.GetVersion() != 3 {
		t.Fatalf("network-only update: %v, version %d, want 3", err, third.GetVersion())
	}
	// The merged policy keeps the filesystem section the update omitted.
	cfg, err = sup.GetSandboxConfig(ctx, &sandboxv1.GetSandboxConfigRequest{SandboxId: id})
	if err != nil || cfg.GetVersion() != 3 || cfg.GetPolicy().GetFilesystem() == nil {
		t.Fatalf("config after network-only update: %v version %d fs %v", err, cfg.GetVersion(), cfg.GetPolicy().GetFilesystem())
	}
}

func TestUpdateConfigRefusals(t *testing.T) {
	e := startExtEnv(t)
	ctx := context.Background()
	e.create("pol")
	ue := e.user

	static := networkPolicy("api.example.com")
	static.Filesystem.ReadWrite = append(static.Filesystem.ReadWrite, "/data")
	_, err := ue.UpdateConfig(ctx, &openshellv1.UpdateConfigRequest{Name: "pol", Policy: static})
	wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(err.Error(), "filesystem_policy") || !strings.Contains(err.Error(), "created") {
		t.Errorf("static refusal does not name the section and when it applies: %v", err)
	}
	proc := networkPolicy("api.example.com")
	proc.Process.RunAsUser = "agent"
	_, err = ue.UpdateConfig(ctx, &openshellv1.UpdateConfigRequest{Name: "pol", Policy: proc})
	wantCode(t, err, codes.FailedPrecondition)

	bad := networkPolicy("api.example.com")
	bad.NetworkPolicies["api"].Endpoints[0].Rules = []*sandboxv1.L7Rule{{}}
	_, err = ue.UpdateConfig(ctx, &openshellv1.UpdateConfigRequest{Name: "pol", Policy: bad})
	wantCode(t, err, codes.InvalidArgument)
	if !strings.Contains(err.Error(), "network_policies.api.endpoints[0].rules") {
		t.Errorf("invalid policy error lacks the field path: %v", err)
	}
	_, err = ue.UpdateConfig(ctx, &openshellv1.UpdateConfigRequest{Name: "missing", Policy: networkPolicy("a.example.com")})
	wantCode(t, err, codes.NotFound)

	// A sandbox token may not update policies (user method).
	sb := e.get("pol")
	_, err = e.sandboxClient(sb.GetMetadata().GetId()).UpdateConfig(ctx, &openshellv1.UpdateConfigRequest{Name: "pol", Policy: networkPolicy("a.example.com")})
	wantCode(t, err, codes.PermissionDenied)
	if v := e.get("pol"); v.GetStatus().GetCurrentPolicyVersion() != 0 {
		t.Errorf("refused updates changed the sandbox: %v", v.GetStatus())
	}
}

func TestReportPolicyStatus(t *testing.T) {
	e := startExtEnv(t)
	ctx := context.Background()
	a := e.create("a").GetMetadata().GetId()
	b := e.create("b").GetMetadata().GetId()
	ue := e.user
	if _, err := ue.UpdateConfig(ctx, &openshellv1.UpdateConfigRequest{Name: "a", Policy: networkPolicy("api.example.com")}); err != nil {
		t.Fatal(err)
	}
	sa := e.sandboxClient(a)

	// Refused: another sandbox's id, a user certificate, a version never stored.
	_, err := sa.ReportPolicyStatus(ctx, &openshellv1.ReportPolicyStatusRequest{SandboxId: b, Version: 1, Status: openshellv1.PolicyStatus_POLICY_STATUS_LOADED})
	wantCode(t, err, codes.PermissionDenied)
	_, err = ue.ReportPolicyStatus(ctx, &openshellv1.ReportPolicyStatusRequest{SandboxId: a, Version: 2, Status: openshellv1.PolicyStatus_POLICY_STATUS_LOADED})
	wantCode(t, err, codes.PermissionDenied)
	_, err = sa.ReportPolicyStatus(ctx, &openshellv1.ReportPolicyStatusRequest{SandboxId: a, Version: 9, Status: openshellv1.PolicyStatus_POLICY_STATUS_LOADED})
	wantCode(t, err, codes.InvalidArgument)

	// A refusal shows as a condition and a log line.
	if _, err := sa.ReportPolicyStatus(ctx, &openshellv1.ReportPolicyStatusRequest{SandboxId: a, Version: 2, Status: openshellv1.PolicyStatus_POLICY_STATUS_FAILED, LoadError: "bad rule"}); err != nil {
		t.Fatal(err)
	}
	var cond *openshellv1.SandboxCondition
	for _, c := range e.get("a").GetStatus().GetConditions() {
		if c.GetType() == gateway.ConditionPolicyApplied {
			cond = c
		}
	}
	if cond == nil || cond.GetStatus() != "False" || !strings.Contains(cond.GetMessage(), "bad rule") {
		t.Fatalf("PolicyApplied condition after a refusal = %v", cond)
	}
	logs, err := e.user.GetSandboxLogs(ctx, &openshellv1.GetSandboxLogsRequest{SandboxId: a})
	if err != nil {
		t.Fatal(err)
	}
	if !containsLog(logs.GetLogs(), "did not apply policy version 2") {
		t.Errorf("no log line for the refusal in %v", logs.GetLogs())
	}

	if _, err := sa.ReportPolicyStatus(ctx, &openshellv1.ReportPolicyStatusRequest{SandboxId: a, Version: 2, Status: openshellv1.PolicyStatus_POLICY_STATUS_LOADED}); err != nil {
		t.Fatal(err)
	}
	st := e.get("a").GetStatus()
	if st.GetCurrentPolicyVersion() != 2 {
		t.Fatalf("current_policy_version = %d, want 2", st.GetCurrentPolicyVersion())
	}
	for _, c := range st.GetConditions() {
		if c.GetType() == gateway.ConditionPolicyApplied {
			t.Errorf("PolicyApplied condition stays after the policy was applied: %v", c)
		}
	}
	logs, _ = e.user.GetSandboxLogs(ctx, &openshellv1.GetSandboxLogsRequest{SandboxId: a})
	if !containsLog(logs.GetLogs(), "applied policy version 2") {
		t.Errorf("no log line for the applied policy")
	}
	if e.get("b").GetStatus().GetCurrentPolicyVersion() != 0 {
		t.Error("sandbox b changed")
	}
}

func containsLog(lines []*openshellv1.SandboxLogLine, sub string) bool {
	for _, l := range lines {
		if strings.Contains(l.GetMessage(), sub) {
			return true
		}
	}
	return false
}

// TestPolicyAndProvidersSurviveRestart: the policy version, the applied version and
// the sealed provider credentials (key reloaded from the state dir) outlive the gateway.
func TestPolicyAndProvidersSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	drv := drivertest.NewMemDriver()
	e := startExtEnvAt(t, dir, drv)
	ctx := context.Background()
	ue := e.user
	if _, err := ue.CreateProvider(ctx, newProvider("gh", "github", map[string]string{"TOKEN": "t0k"})); err != nil {
		t.Fatal(err)
	}
	resp, err := e.user.CreateSandbox(ctx, &openshellv1.CreateSandboxRequest{Name: "r", Spec: &openshellv1.SandboxSpec{
		Template: &openshellv1.SandboxTemplate{Image: "test:1"}, Providers: []string{"gh"}}})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetSandbox().GetMetadata().GetId()
	up, err := ue.UpdateConfig(ctx, &openshellv1.UpdateConfigRequest{Name: "r", Policy: networkPolicy("api.example.com")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.sandboxClient(id).ReportPolicyStatus(ctx, &openshellv1.ReportPolicyStatusRequest{SandboxId: id, Version: up.GetVersion(), Status: openshellv1.PolicyStatus_POLICY_STATUS_LOADED}); err != nil {
		t.Fatal(err)
	}
	e.stop()

	e2 := startExtEnvAt(t, dir, drv)
	sup := e2.sandboxClient(id)
	cfg, err := sup.GetSandboxConfig(ctx, &sandboxv1.GetSandboxConfigRequest{SandboxId: id})
	if err != nil || cfg.GetVersion() != 2 || cfg.GetPolicyHash() != up.GetPolicyHash() {
		t.Fatalf("config after restart: %v version %d hash %s, want 2 %s", err, cfg.GetVersion(), cfg.GetPolicyHash(), up.GetPolicyHash())
	}
	if v := e2.get("r").GetStatus().GetCurrentPolicyVersion(); v != 2 {
		t.Fatalf("current_policy_version after restart = %d, want 2", v)
	}
	pv, err := e2.sandboxClient(id).GetSandboxProviderEnvironment(ctx, envReq(id))
	if err != nil || len(decodeEnv(t, pv)) != 1 || decodeEnv(t, pv)[0].Credentials["TOKEN"] != "t0k" {
		t.Fatalf("providers after restart: %v %v", pv, err)
	}
	next, err := e2.user.UpdateConfig(ctx, &openshellv1.UpdateConfigRequest{Name: "r", Policy: networkPolicy("b.example.com")})
	if err != nil || next.GetVersion() != 3 {
		t.Fatalf("update after restart: %v version %d, want 3", err, next.GetVersion())
	}
}
