package gateway_test

import (
	"context"
	"crypto/tls"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/api/sandboxv1"
	"github.com/openshell/openshell/gateway"
	"github.com/openshell/openshell/gateway/auth"
	"github.com/openshell/openshell/gateway/store"
	"github.com/openshell/openshell/gateway/store/sqlite"
	oscred "github.com/openshell/openshell/supervisor/credentials"
)

func TestAttachDetachSandboxProviders(t *testing.T) {
	e := startExtEnv(t)
	ctx := t.Context()
	createGitHubProvider(t, e.user)
	if _, err := e.user.CreateProvider(ctx, newProvider("dup", "generic", map[string]string{"GITHUB_TOKEN": "x"}, "example.com")); err != nil {
		t.Fatal(err)
	}
	id := e.create("box").GetMetadata().GetId()
	// The driver's status reports bump the resource version too; the expected-version
	// checks below need them all recorded first.
	e.waitDriverSettled("box")

	at, err := e.user.AttachSandboxProvider(ctx, &openshellv1.AttachSandboxProviderRequest{SandboxName: "box", ProviderName: "github"})
	if err != nil || !at.GetAttached() || strings.Join(at.GetSandbox().GetSpec().GetProviders(), ",") != "github" {
		t.Fatalf("attach: %v %v", at, err)
	}
	again, err := e.user.AttachSandboxProvider(ctx, &openshellv1.AttachSandboxProviderRequest{SandboxName: "box", ProviderName: "github"})
	if err != nil || again.GetAttached() {
		t.Fatalf("second attach: attached=%v %v (want false, no error)", again.GetAttached(), err)
	}
	_, err = e.user.AttachSandboxProvider(ctx, &openshellv1.AttachSandboxProviderRequest{SandboxName: "box", ProviderName: "nope"})
	wantCode(t, err, codes.FailedPrecondition)
	_, err = e.user.AttachSandboxProvider(ctx, &openshellv1.AttachSandboxProviderRequest{SandboxName: "box", ProviderName: "dup"})
	wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(err.Error(), "both set GITHUB_TOKEN") {
		t.Errorf("duplicate key error = %v", err)
	}
	_, err = e.user.AttachSandboxProvider(ctx, &openshellv1.AttachSandboxProviderRequest{SandboxName: "missing", ProviderName: "github"})
	wantCode(t, err, codes.NotFound)

	list, err := e.user.ListSandboxProviders(ctx, &openshellv1.ListSandboxProvidersRequest{SandboxName: "box"})
	if err != nil || len(list.GetProviders()) != 1 || list.GetProviders()[0].GetMetadata().GetName() != "github" || strings.Contains(list.String(), ghSecret) {
		t.Fatalf("ListSandboxProviders = %v, %v", list, err)
	}
	env, err := e.sandboxClient(id).GetSandboxProviderEnvironment(ctx, envReq(id))
	if err != nil || env.GetEnvironment()["GITHUB_TOKEN"] != ghSecret {
		t.Fatalf("environment after attach: %v", err)
	}
	_, err = e.user.DeleteProvider(ctx, &openshellv1.DeleteProviderRequest{Name: "github"})
	wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(err.Error(), "sandbox provider detach") {
		t.Errorf("delete-in-use error does not name the fix: %v", err)
	}

	cur := e.get("box").GetMetadata().GetResourceVersion()
	_, err = e.user.DetachSandboxProvider(ctx, &openshellv1.DetachSandboxProviderRequest{SandboxName: "box", ProviderName: "github", ExpectedResourceVersion: cur + 7})
	wantCode(t, err, codes.Aborted)
	det, err := e.user.DetachSandboxProvider(ctx, &openshellv1.DetachSandboxProviderRequest{SandboxName: "box", ProviderName: "github", ExpectedResourceVersion: cur})
	if err != nil || !det.GetDetached() || len(det.GetSandbox().GetSpec().GetProviders()) != 0 {
		t.Fatalf("detach: %v %v", det, err)
	}
	det, err = e.user.DetachSandboxProvider(ctx, &openshellv1.DetachSandboxProviderRequest{SandboxName: "box", ProviderName: "github"})
	if err != nil || det.GetDetached() {
		t.Fatalf("second detach: detached=%v %v", det.GetDetached(), err)
	}
	env, err = e.sandboxClient(id).GetSandboxProviderEnvironment(ctx, envReq(id))
	if err != nil || len(env.GetEnvironment()) != 0 {
		t.Fatalf("environment after detach: %v %v", env, err)
	}
	if d, err := e.user.DeleteProvider(ctx, &openshellv1.DeleteProviderRequest{Name: "github"}); err != nil || !d.GetDeleted() {
		t.Fatalf("delete after detach: %v %v", d, err)
	}
}

func TestUpdateProvider(t *testing.T) {
	e := startExtEnv(t)
	ctx := t.Context()
	p := createGitHubProvider(t, e.user)
	id := e.create("agent", "github").GetMetadata().GetId()

	rev0 := mustEnv(t, e, id).GetProviderEnvRevision()
	// Empty values keep the stored ones (a read-modify-write of a Get result is safe).
	p.Credentials["GH_USER"] = "robot"
	p.Config[oscred.ConfigHeaders] = "X-Api-Key"
	up, err := e.user.UpdateProvider(ctx, &openshellv1.UpdateProviderRequest{Provider: p})
	if err != nil || up.GetProvider().GetConfig()[oscred.ConfigHeaders] != "X-Api-Key" || up.GetProvider().GetMetadata().GetResourceVersion() <= p.GetMetadata().GetResourceVersion() {
		t.Fatalf("update: %v %v", up, err)
	}
	before := mustEnv(t, e, id).GetProviderEnvRevision()
	// The revision follows the providers, not the sandbox's own updates.
	if _, err := e.user.UpdateConfig(ctx, &openshellv1.UpdateConfigRequest{Name: "agent", Policy: networkPolicy("x.example.com")}); err != nil {
		t.Fatal(err)
	}
	if got := mustEnv(t, e, id).GetProviderEnvRevision(); got != before || got == rev0 {
		t.Fatalf("provider_env_revision %d -> (provider update) %d -> (policy update) %d: want a change, then none", rev0, before, got)
	}
	ps := decodeEnv(t, mustEnv(t, e, id))
	if len(ps) != 1 || ps[0].Credentials["GITHUB_TOKEN"] != ghSecret || ps[0].Credentials["GH_USER"] != "robot" || strings.Join(ps[0].Headers, ",") != "X-Api-Key" {
		t.Fatalf("supervisor view after update: %+v", ps)
	}
	// A stale resource version is refused; a new key needs a value; bindings are checked.
	_, err = e.user.UpdateProvider(ctx, &openshellv1.UpdateProviderRequest{Provider: p})
	wantCode(t, err, codes.Aborted)
	p.Metadata.ResourceVersion = 0
	p.Credentials = map[string]string{"NEW_KEY": ""}
	_, err = e.user.UpdateProvider(ctx, &openshellv1.UpdateProviderRequest{Provider: p})
	wantCode(t, err, codes.InvalidArgument)
	p.Credentials = nil
	p.Config = map[string]string{oscred.ConfigHosts: "*.github.com"}
	_, err = e.user.UpdateProvider(ctx, &openshellv1.UpdateProviderRequest{Provider: p})
	wantCode(t, err, codes.InvalidArgument)
	if !strings.Contains(err.Error(), "wildcard") {
		t.Errorf("wildcard without opt-in: %v", err)
	}
}

func mustEnv(t *testing.T, e *env, id string) *openshellv1.GetSandboxProviderEnvironmentResponse {
	t.Helper()
	resp, err := e.sandboxClient(id).GetSandboxProviderEnvironment(t.Context(), envReq(id))
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestPolicyRevisions(t *testing.T) {
	e := startExtEnv(t)
	ctx := t.Context()
	id := e.create("pol").GetMetadata().GetId()
	sup := e.sandboxClient(id)

	revs := func() string {
		t.Helper()
		l, err := e.user.ListSandboxPolicies(ctx, &openshellv1.ListSandboxPoliciesRequest{Name: "pol"})
		if err != nil {
			t.Fatal(err)
		}
		var parts []string
		for _, r := range l.GetRevisions() {
			parts = append(parts, strings.TrimPrefix(r.GetStatus().String(), "POLICY_STATUS_")+"@"+string(rune('0'+r.GetVersion())))
		}
		return strings.Join(parts, " ")
	}
	if got := revs(); got != "PENDING@1" {
		t.Fatalf("history at create = %q", got)
	}
	if _, err := e.user.UpdateConfig(ctx, &openshellv1.UpdateConfigRequest{Name: "pol", Policy: networkPolicy("a.example.com")}); err != nil {
		t.Fatal(err)
	}
	rule := networkPolicy("b.example.com").GetNetworkPolicies()["api"]
	v3, err := e.user.UpdateConfig(ctx, &openshellv1.UpdateConfigRequest{Name: "pol", MergeOperations: []*openshellv1.PolicyMergeOperation{
		{Operation: &openshellv1.PolicyMergeOperation_AddRule{AddRule: &openshellv1.AddNetworkRule{RuleName: "b", Rule: rule}}}}})
	if err != nil || v3.GetVersion() != 3 {
		t.Fatalf("merge add_rule: %v %v", v3, err)
	}
	v4, err := e.user.UpdateConfig(ctx, &openshellv1.UpdateConfigRequest{Name: "pol", MergeOperations: []*openshellv1.PolicyMergeOperation{
		{Operation: &openshellv1.PolicyMergeOperation_RemoveRule{RemoveRule: &openshellv1.RemoveNetworkRule{RuleName: "api"}}}}})
	if err != nil || v4.GetVersion() != 4 {
		t.Fatalf("merge remove_rule: %v %v", v4, err)
	}
	st, err := e.user.GetSandboxPolicyStatus(ctx, &openshellv1.GetSandboxPolicyStatusRequest{Name: "pol"})
	if err != nil || st.GetRevision().GetVersion() != 4 || len(st.GetRevision().GetPolicy().GetNetworkPolicies()) != 1 || st.GetRevision().GetPolicy().GetNetworkPolicies()["b"] == nil {
		t.Fatalf("newest revision: %v %v", st, err)
	}
	for _, tc := range []struct {
		req  *openshellv1.UpdateConfigRequest
		code codes.Code
	}{
		{&openshellv1.UpdateConfigRequest{Name: "pol", MergeOperations: []*openshellv1.PolicyMergeOperation{{Operation: &openshellv1.PolicyMergeOperation_RemoveRule{RemoveRule: &openshellv1.RemoveNetworkRule{RuleName: "gone"}}}}}, codes.NotFound},
		{&openshellv1.UpdateConfigRequest{Name: "pol", MergeOperations: []*openshellv1.PolicyMergeOperation{{Operation: &openshellv1.PolicyMergeOperation_AddAllowRules{AddAllowRules: &openshellv1.AddAllowRules{Host: "x"}}}}}, codes.Unimplemented},
		{&openshellv1.UpdateConfigRequest{Name: "pol", Global: true, Policy: networkPolicy("c.example.com")}, codes.Unimplemented},
		{&openshellv1.UpdateConfigRequest{Name: "pol", SettingKey: "k", SettingValue: &sandboxv1.SettingValue{Value: &sandboxv1.SettingValue_BoolValue{BoolValue: true}}}, codes.Unimplemented},
		{&openshellv1.UpdateConfigRequest{Name: "pol"}, codes.InvalidArgument},
		{&openshellv1.UpdateConfigRequest{Name: "pol", Policy: networkPolicy("c.example.com"), ExpectedResourceVersion: 1}, codes.Aborted},
	} {
		_, err := e.user.UpdateConfig(ctx, tc.req)
		wantCode(t, err, tc.code)
	}
	// A sandbox may not change its own policy, though UpdateConfig admits its token.
	_, err = sup.UpdateConfig(ctx, &openshellv1.UpdateConfigRequest{Name: "pol", Policy: networkPolicy("c.example.com")})
	wantCode(t, err, codes.PermissionDenied)

	if _, err := sup.ReportPolicyStatus(ctx, &openshellv1.ReportPolicyStatusRequest{SandboxId: id, Version: 3, Status: openshellv1.PolicyStatus_POLICY_STATUS_LOADED}); err != nil {
		t.Fatal(err)
	}
	if got := revs(); got != "PENDING@4 LOADED@3 SUPERSEDED@2 SUPERSEDED@1" {
		t.Fatalf("history after v3 loaded = %q", got)
	}
	if _, err := sup.ReportPolicyStatus(ctx, &openshellv1.ReportPolicyStatusRequest{SandboxId: id, Version: 4, Status: openshellv1.PolicyStatus_POLICY_STATUS_FAILED, LoadError: "rule b: bad"}); err != nil {
		t.Fatal(err)
	}
	st, err = e.user.GetSandboxPolicyStatus(ctx, &openshellv1.GetSandboxPolicyStatusRequest{Name: "pol", Version: 4})
	if err != nil || st.GetRevision().GetStatus() != openshellv1.PolicyStatus_POLICY_STATUS_FAILED || st.GetRevision().GetLoadError() != "rule b: bad" || st.GetActiveVersion() != 3 {
		t.Fatalf("failed revision: %v %v", st, err)
	}
	st, err = e.user.GetSandboxPolicyStatus(ctx, &openshellv1.GetSandboxPolicyStatusRequest{Name: "pol", Version: 3})
	if err != nil || st.GetRevision().GetLoadedAtMs() == 0 || st.GetRevision().GetPolicyHash() != v3.GetPolicyHash() {
		t.Fatalf("loaded revision: %v %v", st, err)
	}
	_, err = sup.ReportPolicyStatus(ctx, &openshellv1.ReportPolicyStatusRequest{SandboxId: id, Version: 4, Status: openshellv1.PolicyStatus_POLICY_STATUS_SUPERSEDED})
	wantCode(t, err, codes.InvalidArgument)
	_, err = e.user.GetSandboxPolicyStatus(ctx, &openshellv1.GetSandboxPolicyStatusRequest{Name: "pol", Version: 9})
	wantCode(t, err, codes.NotFound)
	page, err := e.user.ListSandboxPolicies(ctx, &openshellv1.ListSandboxPoliciesRequest{Name: "pol", Offset: 1, Limit: 2})
	if err != nil || len(page.GetRevisions()) != 2 || page.GetRevisions()[0].GetVersion() != 3 {
		t.Fatalf("paged history: %v %v", page, err)
	}

	// A deleted sandbox's revisions are swept at the next start.
	if _, err := e.user.DeleteSandbox(ctx, &openshellv1.DeleteSandboxRequest{Name: "pol"}); err != nil {
		t.Fatal(err)
	}
	e.waitGone("pol")
	dir, drv := e.dir, e.drv
	e.stop()
	if n := countRevisions(t, dir); n != 4 {
		t.Fatalf("%d revision rows before the restart, want 4 (v1-v4)", n)
	}
	e2 := startExtEnvAt(t, dir, drv)
	if n := countRevisions(t, dir); n != 0 {
		t.Fatalf("%d revision rows of the deleted sandbox after the restart, want 0", n)
	}
	id2 := e2.create("pol").GetMetadata().GetId()
	if id2 == id {
		t.Fatal("same id for a new sandbox")
	}
	l, err := e2.user.ListSandboxPolicies(ctx, &openshellv1.ListSandboxPoliciesRequest{Name: "pol"})
	if err != nil || len(l.GetRevisions()) != 1 {
		t.Fatalf("a new sandbox of the same name sees %v, %v", l, err)
	}
}

func TestGatewayInfoConfigAndTokens(t *testing.T) {
	e := startExtEnv(t)
	ctx := t.Context()
	cfg, err := e.user.GetGatewayConfig(ctx, &sandboxv1.GetGatewayConfigRequest{})
	if err != nil || len(cfg.GetSettings()) != 0 {
		t.Fatalf("GetGatewayConfig: %v %v", cfg, err)
	}
	info, err := e.user.GetGatewayInfo(ctx, &openshellv1.GetGatewayInfoRequest{})
	if err != nil || info.GetStatus() != openshellv1.ServiceStatus_SERVICE_STATUS_HEALTHY || info.GetGatewayVersion() != gateway.Version ||
		len(info.GetComputeDrivers()) != 1 || info.GetComputeDrivers()[0].GetName() == "" {
		t.Fatalf("GetGatewayInfo: %v %v", info, err)
	}
	me, err := e.user.GetCurrentUser(ctx, &openshellv1.GetCurrentUserRequest{})
	if err != nil || me.GetSubject() == "" {
		t.Fatalf("GetCurrentUser: %v %v", me, err)
	}

	id := e.create("tok").GetMetadata().GetId()
	other := e.create("other").GetMetadata().GetId()
	_, err = e.user.IssueSandboxToken(ctx, &openshellv1.IssueSandboxTokenRequest{})
	wantCode(t, err, codes.PermissionDenied)
	before := time.Now().UnixMilli()
	iss, err := e.sandboxClient(id).IssueSandboxToken(ctx, &openshellv1.IssueSandboxTokenRequest{})
	if err != nil || iss.GetExpiresAtMs() <= before {
		t.Fatalf("IssueSandboxToken: %v %v", iss, err)
	}
	if got, err := e.issuer.Verify(iss.GetToken()); err != nil || got != id {
		t.Fatalf("issued token is for %q (%v), want %q: a sandbox gets tokens for itself only", got, err, id)
	}
	ref, err := e.sandboxClient(other).RefreshSandboxToken(ctx, &openshellv1.RefreshSandboxTokenRequest{})
	if got, verr := e.issuer.Verify(ref.GetToken()); err != nil || verr != nil || got != other {
		t.Fatalf("RefreshSandboxToken: %v / %v %q", err, verr, got)
	}
	_, err = e.sandboxClient(id).RefreshSandboxToken(ctx, &openshellv1.RefreshSandboxTokenRequest{ExtensionServiceNames: []string{"x"}})
	wantCode(t, err, codes.NotFound)
	// The new token works for the sandbox's own RPCs.
	fresh := e.client(e.sandboxTLS(), iss.GetToken())
	if _, err := fresh.GetSandboxProviderEnvironment(ctx, envReq(id)); err != nil {
		t.Fatalf("issued token refused: %v", err)
	}
	// A deleted sandbox gets no new token.
	if _, err := e.user.DeleteSandbox(ctx, &openshellv1.DeleteSandboxRequest{Name: "tok"}); err != nil {
		t.Fatal(err)
	}
	e.waitGone("tok")
	_, err = fresh.IssueSandboxToken(ctx, &openshellv1.IssueSandboxTokenRequest{})
	if status.Code(err) == codes.OK {
		t.Fatal("a deleted sandbox's token minted a new one")
	}
}

// TestUnimplementedRPCsSayWhy calls every RPC the gateway does not implement with an
// empty request: each answers UNIMPLEMENTED with its reason, not the generated
// "method X not implemented".
func TestUnimplementedRPCsSayWhy(t *testing.T) {
	e := startExtEnv(t)
	cc, err := grpc.NewClient("passthrough:///"+e.addr, grpc.WithTransportCredentials(credentials.NewTLS(e.bundle.ClientTLSConfig())))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	// Sandbox-mode RPCs (SubmitPolicyAnalysis) are called with a sandbox token.
	id := e.create("u").GetMetadata().GetId()
	tok, err := e.issuer.Mint(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := grpc.NewClient("passthrough:///"+e.addr, grpc.WithTransportCredentials(credentials.NewTLS(e.sandboxTLS())), grpc.WithPerRPCCredentials(bearer(tok)))
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	d, err := protoregistry.GlobalFiles.FindDescriptorByName("openshell.v1.OpenShell")
	if err != nil {
		t.Fatal(err)
	}
	methods := d.(protoreflect.ServiceDescriptor).Methods()
	unimplemented := 0
	for i := 0; i < methods.Len(); i++ {
		m := methods.Get(i)
		if m.IsStreamingClient() || m.IsStreamingServer() {
			continue
		}
		in, err := protoregistry.GlobalTypes.FindMessageByName(m.Input().FullName())
		if err != nil {
			t.Fatal(err)
		}
		out, err := protoregistry.GlobalTypes.FindMessageByName(m.Output().FullName())
		if err != nil {
			t.Fatal(err)
		}
		conn := cc
		if auth.ModeOf("/openshell.v1.OpenShell/"+string(m.Name())) == auth.Sandbox {
			conn = sc
		}
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		err = conn.Invoke(ctx, "/openshell.v1.OpenShell/"+string(m.Name()), in.New().Interface(), out.New().Interface())
		cancel()
		if status.Code(err) != codes.Unimplemented {
			continue
		}
		unimplemented++
		msg := status.Convert(err).Message()
		if strings.Contains(msg, "not implemented") && !strings.Contains(msg, "by this gateway") || len(msg) < 60 {
			t.Errorf("%s: UNIMPLEMENTED without a reason: %q", m.Name(), msg)
		}
	}
	// 26 RPCs have no implementation (provider profiles 6, refresh 4,
	// drafts 9, workspaces 7).
	if unimplemented != 26 {
		t.Errorf("%d RPCs answered UNIMPLEMENTED to an empty request, want 26", unimplemented)
	}
}

// countRevisions counts the policy revision rows in the test gateway's database.
func countRevisions(t *testing.T, dir string) int {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(dir, "openshell.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	objs, err := st.List(t.Context(), "policy_revision", store.ListOptions{AllWorkspaces: true})
	if err != nil {
		t.Fatal(err)
	}
	return len(objs)
}

// sandboxTLS is a supervisor's TLS configuration: the gateway CA, no client certificate.
func (e *env) sandboxTLS() *tls.Config {
	return &tls.Config{RootCAs: e.bundle.CertPool(), MinVersion: tls.VersionTLS13}
}

// waitGone waits until GetSandbox answers NOT_FOUND for name.
func (e *env) waitGone(name string) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := e.user.GetSandbox(context.Background(), &openshellv1.GetSandboxRequest{Name: name})
		if status.Code(err) == codes.NotFound {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("sandbox %s still there after delete: %v", name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
