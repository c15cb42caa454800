package daemon

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/drivers/grpcdriver"
	"github.com/openshell/openshell/gateway/config"
	"github.com/openshell/openshell/supervisor/session"
)

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestPlaintextLocalDevWithHealth runs the assembled gateway with --disable-tls
// against an external MemDriver socket: the local-dev user may call user RPCs, and the
// health listener serves /healthz, /readyz and /metrics.
func TestPlaintextLocalDevWithHealth(t *testing.T) {
	tmp, err := os.MkdirTemp("", "gwd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	sock := filepath.Join(tmp, "d.sock")
	lis, err := grpcdriver.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { grpcdriver.Serve(sctx, lis, drivertest.NewMemDriver()); close(served) }()
	t.Cleanup(func() { scancel(); <-served })

	cfg := config.Defaults()
	cfg.StateDir = filepath.Join(tmp, "state")
	cfg.Port = 0
	cfg.DisableTLS = true
	cfg.ComputeDriverSocket = sock
	cfg.HealthPort = freePort(t)
	g, err := Start(t.Context(), &cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Stop(5 * time.Second)

	cc, err := grpc.NewClient("passthrough:///"+g.Addr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := openshellv1.NewOpenShellClient(cc)
	if _, err := c.CreateSandbox(t.Context(), &openshellv1.CreateSandboxRequest{Name: "dev", Spec: &openshellv1.SandboxSpec{}}); err != nil {
		t.Fatalf("local-dev user create: %v", err)
	}
	list, err := c.ListSandboxes(t.Context(), &openshellv1.ListSandboxesRequest{})
	if err != nil || len(list.GetSandboxes()) != 1 {
		t.Fatalf("list = %v, %v", list, err)
	}

	base := "http://127.0.0.1:" + strconv.Itoa(cfg.HealthPort)
	for path, want := range map[string]string{"/healthz": "ok", "/readyz": "ok", "/metrics": "openshell_gateway_up 1"} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Errorf("%s = %d %q, want %q", path, resp.StatusCode, body, want)
		}
	}
	// The state directory holds the token key and the SQLite database, not certs.
	for _, f := range []string{"sandbox-token.key", "openshell.db", "gateway-id"} {
		if _, err := os.Stat(filepath.Join(cfg.StateDir, f)); err != nil {
			t.Errorf("state file %s: %v", f, err)
		}
	}
	if _, err := os.Stat(PKIDir(cfg.StateDir)); err == nil {
		t.Errorf("--disable-tls must not create a PKI")
	}
}

func TestStartRejectsUnknownDriver(t *testing.T) {
	cfg := config.Defaults()
	cfg.StateDir = t.TempDir()
	cfg.Driver = "lxc"
	_, err := Start(t.Context(), &cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err == nil || !strings.Contains(err.Error(), "docker, podman, kubernetes, vm") {
		t.Fatalf("err = %v", err)
	}
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return false }

// TestStopIsPromptWithOpenStreams: a connected supervisor and an open watch must not
// hold a graceful shutdown for its whole timeout.
func TestStopIsPromptWithOpenStreams(t *testing.T) {
	tmp, err := os.MkdirTemp("", "gws")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	drv := drivertest.NewMemDriver()
	sock := filepath.Join(tmp, "d.sock")
	lis, err := grpcdriver.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { grpcdriver.Serve(sctx, lis, drv); close(served) }()
	t.Cleanup(func() { scancel(); <-served })
	cfg := config.Defaults()
	cfg.StateDir = filepath.Join(tmp, "state")
	cfg.Port = 0
	cfg.DisableTLS = true
	cfg.ComputeDriverSocket = sock
	g, err := Start(t.Context(), &cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("passthrough:///"+g.Addr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := openshellv1.NewOpenShellClient(cc)
	resp, err := c.CreateSandbox(t.Context(), &openshellv1.CreateSandboxRequest{Name: "s", Spec: &openshellv1.SandboxSpec{}})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetSandbox().GetMetadata().GetId()
	ws, err := c.WatchSandbox(t.Context(), &openshellv1.WatchSandboxRequest{Id: id, FollowStatus: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ws.Recv(); err != nil {
		t.Fatal(err)
	}
	sup, err := c.ConnectSupervisor(session.Identity{InstanceID: "i", Secret: "s"}.Outgoing(t.Context()), grpc.PerRPCCredentials(bearer(drv.Spec(id).GetSandboxToken())))
	if err != nil {
		t.Fatal(err)
	}
	sup.Send(&openshellv1.SupervisorMessage{Payload: &openshellv1.SupervisorMessage_Hello{Hello: &openshellv1.SupervisorHello{SandboxId: id, InstanceId: "i"}}})
	if _, err := sup.Recv(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := g.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Stop took %s with open streams", d)
	}
}

// TestExtraListenerForLoopbackRequirement: a driver that needs the gateway on
// loopback gets a 127.0.0.1:<port> listener when the gateway binds elsewhere.
func TestExtraListenerForLoopbackRequirement(t *testing.T) {
	drv := drivertest.NewMemDriver()
	drv.SetListenerRequirements([]*computev1.GatewayListenerRequirement{{Reason: "runners dial loopback",
		Selector: &computev1.GatewayListenerRequirement_LoopbackInterface{LoopbackInterface: &computev1.GatewayLoopbackInterfaceRequirement{}}}})
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	// Bound on loopback already: nothing extra.
	ls, err := extraListeners(t.Context(), drv, &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 1234}, false, log)
	if err != nil || len(ls) != 0 {
		t.Fatalf("loopback bind: %v %v", ls, err)
	}
	// Bound on another address: a loopback listener on the same port.
	port := freePort(t)
	ls, err = extraListeners(t.Context(), drv, &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: port}, false, log)
	if err != nil || len(ls) != 1 || ls[0].Addr().String() != "127.0.0.1:"+strconv.Itoa(port) {
		t.Fatalf("extra = %v, %v", ls, err)
	}
	ls[0].Close()
	drv.SetListenerRequirements([]*computev1.GatewayListenerRequirement{{Reason: "bad"}})
	if _, err := extraListeners(t.Context(), drv, &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 1}, false, log); err == nil {
		t.Error("a requirement without a selector must be rejected")
	}
}

// TestPlaintextRefusesNonLoopbackExtraListener: a driver asking for the gateway on a
// bridge address (where sandboxes reach it) is refused when TLS is off, because every
// caller of a plaintext gateway is an administrator; a loopback requirement still works.
func TestPlaintextRefusesNonLoopbackExtraListener(t *testing.T) {
	drv := drivertest.NewMemDriver()
	port := freePort(t)
	drv.SetListenerRequirements([]*computev1.GatewayListenerRequirement{{Reason: "sandboxes on a bridge",
		Selector: &computev1.GatewayListenerRequirement_ExactBindAddress{ExactBindAddress: "192.0.2.7:" + strconv.Itoa(port)}}})
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ls, err := extraListeners(t.Context(), drv, &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: port}, true, log)
	if err == nil {
		for _, l := range ls {
			l.Close()
		}
		t.Fatal("a plaintext gateway opened a listener on a non-loopback address")
	}
	for _, want := range []string{"192.0.2.7", "--disable-tls", "administrator"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	drv.SetListenerRequirements([]*computev1.GatewayListenerRequirement{{Reason: "runners dial loopback",
		Selector: &computev1.GatewayListenerRequirement_LoopbackInterface{LoopbackInterface: &computev1.GatewayLoopbackInterfaceRequirement{}}}})
	ls, err = extraListeners(t.Context(), drv, &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: port}, true, log)
	if err != nil || len(ls) != 1 {
		t.Fatalf("loopback requirement under --disable-tls: %v %v", ls, err)
	}
	ls[0].Close()
}
