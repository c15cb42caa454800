package runner

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/openshell/openshell/api/openshellv1"
	sandboxv1 "github.com/openshell/openshell/api/sandboxv1"
	"github.com/openshell/openshell/gateway/pki"
	"github.com/openshell/openshell/supervisor/bootstrap"
	"github.com/openshell/openshell/supervisor/policy"
)

const (
	syncTestSandbox = "sb-policysync"
	syncTestToken   = "sandbox-token-for-policysync"
)

// configServer is a gateway answering GetSandboxConfig for one sandbox, checking the
// sandbox's bearer token as the real gateway does. resp nil = the gateway is failing.
type configServer struct {
	pb.UnimplementedOpenShellServer
	resp  atomic.Pointer[sandboxv1.GetSandboxConfigResponse]
	calls atomic.Int64 // authorized calls
}

func (s *configServer) GetSandboxConfig(ctx context.Context, req *sandboxv1.GetSandboxConfigRequest) (*sandboxv1.GetSandboxConfigResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if a := md.Get("authorization"); len(a) != 1 || a[0] != "Bearer "+syncTestToken {
		return nil, status.Error(codes.Unauthenticated, "bad sandbox token")
	}
	if req.GetSandboxId() != syncTestSandbox {
		return nil, status.Error(codes.PermissionDenied, "token is for another sandbox")
	}
	s.calls.Add(1)
	r := s.resp.Load()
	if r == nil {
		return nil, status.Error(codes.Unavailable, "gateway store not ready")
	}
	return r, nil
}

// startConfigServer serves cs over TLS with a fresh test CA, and whatever more the
// register functions add to the server; it returns the listen address and the CA
// PEM.
func startConfigServer(t *testing.T, cs pb.OpenShellServer, register ...func(*grpc.Server)) (addr string, caPEM []byte) {
	t.Helper()
	b, err := pki.Ensure(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(b.ServerTLSConfig())))
	pb.RegisterOpenShellServer(srv, cs)
	for _, r := range register {
		r(srv)
	}
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return l.Addr().String(), b.CAPEM
}

func policyResp(t *testing.T, version uint32, yaml string) *sandboxv1.GetSandboxConfigResponse {
	t.Helper()
	p, err := policy.Parse([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return &sandboxv1.GetSandboxConfigResponse{Policy: p.ToProto(), Version: version, PolicyValidationFailureMode: "fail_closed"}
}

func syncSpec(gwPort string, caPEM []byte, token string) *Spec {
	return &Spec{SandboxID: syncTestSandbox, Egress: EgressPolicy{AllowPrivate: true},
		Bootstrap: bootstrap.Config{Endpoint: "https://" + net.JoinHostPort(pki.SandboxHostName, gwPort),
			SandboxID: syncTestSandbox, Token: token, CAPEM: caPEM}}
}

// TestEgressPolicySync runs the runner's egress wiring (startEgress, as Run calls it)
// against a real TLS gRPC gateway and a real TCP target: CONNECTs and name lookups are
// refused with 503 until the policy is fetched, allowed while the gateway's policy A
// names the target (and the name), and refused with 403 — the target seeing no new
// connection — once the gateway serves policy B, which does not.
func TestEgressPolicySync(t *testing.T) {
	tport, accepted := startHiTarget(t)

	cs := &configServer{}
	gw, caPEM := startConfigServer(t, cs)
	_, gwPort, _ := net.SplitHostPort(gw)

	sock := filepath.Join(t.TempDir(), "egress.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stop, err := startEgress(t.Context(), l, syncSpec(gwPort, caPEM, syncTestToken), tcpTarget(gw), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	defer stop()

	connect := func() int {
		t.Helper()
		resp, c, br := egressDo(t, sock, fmt.Sprintf("CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-Openshell-Host: localhost\r\n\r\n", tport, tport))
		defer c.Close()
		if resp.StatusCode == 200 {
			if b, _ := io.ReadAll(br); string(b) != "hi" {
				t.Fatalf("tunnel carried %q, want %q", b, "hi")
			}
		}
		return resp.StatusCode
	}
	// lookup asks the egress port for a name and returns the status and body.
	lookup := func(name string) (int, string) {
		t.Helper()
		resp, c, _ := egressDo(t, sock, "GET /v1/resolve?name="+name+" HTTP/1.1\r\nHost: runner\r\n\r\n")
		defer c.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// The first poll happens at once; the gateway fails it, so nothing is known yet.
	deadline := time.Now().Add(10 * time.Second)
	for cs.calls.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the runner did not ask the gateway for the policy at start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code := connect(); code != 503 {
		t.Fatalf("before the policy is known: status %d, want 503", code)
	}
	if n := accepted.Load(); n != 0 {
		t.Fatalf("the target saw %d connections before the policy was known", n)
	}
	if code, body := lookup("localhost"); code != 503 || !strings.Contains(body, "not known yet") {
		t.Fatalf("lookup before the policy is known: %d %q, want 503", code, body)
	}

	// Policy A names the target, and localhost (a name the host's DNS knows).
	cs.resp.Store(policyResp(t, 1, "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - host: localhost\n        port: "+strconv.Itoa(tport)+"\n      - host: localhost\n        port: 80\n"))
	waitStatus := func(want int) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			before := accepted.Load()
			code := connect()
			if code == want {
				if want != 200 && accepted.Load() != before {
					t.Fatalf("status %d but the target saw a connection", code)
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("status %d, want %d", code, want)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	waitStatus(200)
	if accepted.Load() == 0 {
		t.Fatal("policy A allowed the CONNECT but the target saw no connection")
	}
	if code, body := lookup("localhost"); code != 200 || !strings.Contains(body, `"addrs":[`) {
		t.Fatalf("lookup of a name policy A names: %d %q, want 200", code, body)
	}
	if code, body := lookup("other.test"); code != 403 || !strings.Contains(body, "allows host other.test") {
		t.Fatalf("lookup of a name policy A does not name: %d %q, want 403", code, body)
	}

	// Policy B names another host only: the runner refuses on its own, whatever the guest does.
	cs.resp.Store(policyResp(t, 2, "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - host: other.test\n        port: "+strconv.Itoa(tport)+"\n"))
	waitStatus(403)
	before := accepted.Load()
	for range 3 {
		if code := connect(); code != 403 {
			t.Fatalf("after the switch to policy B: status %d, want 403", code)
		}
	}
	if n := accepted.Load(); n != before {
		t.Fatalf("the target saw %d new connections after policy B", n-before)
	}
	if code, body := lookup("localhost"); code != 403 || !strings.Contains(body, "allows host localhost") {
		t.Fatalf("lookup of a name only policy A named, under policy B: %d %q, want 403", code, body)
	}
}

// TestPolicySyncAuthAndApply: a wrong token gets no policy (and the egress stays
// closed); the bootstrap policy is the starting point; an answer without a policy
// keeps it; an invalid policy denies everything.
func TestPolicySyncAuthAndApply(t *testing.T) {
	cs := &configServer{}
	gw, caPEM := startConfigServer(t, cs)
	_, gwPort, _ := net.SplitHostPort(gw)
	cs.resp.Store(policyResp(t, 1, "version: 1\n"))

	bad := syncSpec(gwPort, caPEM, "not-the-token")
	cc, err := dialGateway(&bad.Bootstrap, tcpTarget(gw))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ps, err := newPolicySync(cc, syncTestSandbox, nil, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	if err := ps.poll(t.Context()); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("poll with a wrong token: %v, want Unauthenticated", err)
	}
	if ps.Current() != nil {
		t.Fatal("a policy is known after a refused poll")
	}

	// A good token over TLS to the test CA loads the gateway's policy.
	good := syncSpec(gwPort, caPEM, syncTestToken)
	cc2, err := dialGateway(&good.Bootstrap, tcpTarget(gw))
	if err != nil {
		t.Fatal(err)
	}
	defer cc2.Close()
	allowYAML := "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - host: boot.test\n        port: 443\n"
	ps2, err := newPolicySync(cc2, syncTestSandbox, []byte(allowYAML), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	if c := ps2.Current(); c == nil || !c.Destination("boot.test", 443).Allow {
		t.Fatal("the bootstrap policy is not the starting point")
	}
	ps2.apply(&sandboxv1.GetSandboxConfigResponse{Version: 1})
	if !ps2.Current().Destination("boot.test", 443).Allow {
		t.Fatal("an answer without a policy replaced the bootstrap policy")
	}
	if err := ps2.poll(t.Context()); err != nil {
		t.Fatal(err)
	}
	if ps2.Current().Destination("boot.test", 443).Allow {
		t.Fatal("the gateway's deny-all policy did not replace the bootstrap one")
	}
	// Invalid (a port out of range): fail closed.
	ps2.cur.Store(policy.MustCompile(mustParse(t, allowYAML)))
	inv := policyResp(t, 3, allowYAML)
	for _, r := range inv.Policy.NetworkPolicies {
		r.Endpoints[0].Port = 70000
	}
	ps2.apply(inv)
	if ps2.Current().Destination("boot.test", 443).Allow {
		t.Fatal("an invalid policy left the previous one allowing egress")
	}

	// No policy at all yet and none from the gateway: the restrictive default.
	ps3, _ := newPolicySync(cc2, syncTestSandbox, nil, slog.Default())
	ps3.apply(&sandboxv1.GetSandboxConfigResponse{})
	if ps3.Current() == nil || ps3.Current().Destination("boot.test", 443).Allow {
		t.Fatal("an answer without a policy did not load the deny-all default")
	}

	// A bootstrap policy that does not parse, or a config without endpoint, is refused.
	if _, err := newPolicySync(cc2, syncTestSandbox, []byte("version: 7\n"), slog.Default()); err == nil {
		t.Fatal("a bad bootstrap policy was accepted")
	}
	l, _ := net.Listen("unix", filepath.Join(t.TempDir(), "e.sock"))
	defer l.Close()
	if _, err := startEgress(t.Context(), l, &Spec{SandboxID: syncTestSandbox, Bootstrap: bootstrap.Config{Token: "x"}}, tcpTarget(gw), slog.Default()); err == nil {
		t.Fatal("startEgress without a gateway endpoint succeeded")
	}
}

func mustParse(t *testing.T, y string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return p
}
