package gateway_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/gateway"
	"github.com/openshell/openshell/gateway/auth"
	"github.com/openshell/openshell/gateway/pki"
	"github.com/openshell/openshell/gateway/sshrelay"
	"github.com/openshell/openshell/gateway/store/sqlite"
	"github.com/openshell/openshell/gateway/token"
	"github.com/openshell/openshell/supervisor/session"
)

// env is a real gateway on loopback: real TLS (gateway/pki), real SQLite, real token
// issuer; the compute driver is drivertest.MemDriver.
type env struct {
	t      testing.TB
	dir    string
	drv    *drivertest.MemDriver
	srv    *gateway.Server
	gs     *grpc.Server
	addr   string
	bundle *pki.Bundle
	issuer *token.Issuer
	user   openshellv1.OpenShellClient
	closed bool
}

func quietLog() *slog.Logger {
	if os.Getenv("GATEWAY_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func startEnv(t testing.TB, dir string, drv *drivertest.MemDriver) *env {
	t.Helper()
	return startEnvWith(t, dir, drv, 200*time.Millisecond)
}

func startEnvWith(t testing.TB, dir string, drv *drivertest.MemDriver, reconcile time.Duration, mods ...func(*gateway.Options)) *env {
	t.Helper()
	ctx := context.Background()
	bundle, err := pki.Ensure(filepath.Join(dir, "pki"), nil)
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := token.NewIssuer(filepath.Join(dir, "token.key"), "test-gateway")
	if err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(ctx, filepath.Join(dir, "openshell.db"))
	if err != nil {
		t.Fatal(err)
	}
	opts := gateway.Options{Store: st, Driver: drv, DriverName: "mem", Tokens: issuer, Log: quietLog(),
		ReconcileInterval: reconcile, GatewayPort: 1, Exec: sshrelay.Exec, Interactive: sshrelay.Interactive}
	for _, m := range mods {
		m(&opts)
	}
	srv, err := gateway.New(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	gs := gateway.NewGRPCServer(&auth.Authenticator{Tokens: issuer, Log: quietLog()}, grpc.Creds(credentials.NewTLS(bundle.ServerTLSConfig())))
	srv.Register(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	e := &env{t: t, dir: dir, drv: drv, srv: srv, gs: gs, addr: lis.Addr().String(), bundle: bundle, issuer: issuer}
	e.user = e.client(bundle.ClientTLSConfig(), "")
	t.Cleanup(func() {
		e.stop()
		st.Close()
	})
	return e
}

func (e *env) stop() {
	if e.closed {
		return
	}
	e.closed = true
	e.gs.Stop()
	e.srv.Close()
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return true }

// client dials the gateway with tc and, when tok is set, a sandbox bearer token.
func (e *env) client(tc *tls.Config, tok string) openshellv1.OpenShellClient {
	e.t.Helper()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tc))}
	if tok != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(tok)))
	}
	cc, err := grpc.NewClient("passthrough:///"+e.addr, opts...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cc.Close() })
	return openshellv1.NewOpenShellClient(cc)
}

// sandboxClient is what a supervisor uses: CA only, no client cert, bearer token.
func (e *env) sandboxClient(id string) openshellv1.OpenShellClient {
	e.t.Helper()
	tok, err := e.issuer.Mint(id, time.Hour)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.client(&tls.Config{RootCAs: e.bundle.CertPool(), MinVersion: tls.VersionTLS13}, tok)
}

// create makes sandbox name from the test image, with the named providers attached.
func (e *env) create(name string, providers ...string) *openshellv1.Sandbox {
	e.t.Helper()
	resp, err := e.user.CreateSandbox(context.Background(), &openshellv1.CreateSandboxRequest{Name: name, Spec: &openshellv1.SandboxSpec{
		Template: &openshellv1.SandboxTemplate{Image: "test:1"}, Providers: providers}})
	if err != nil {
		e.t.Fatalf("CreateSandbox(%s): %v", name, err)
	}
	return resp.GetSandbox()
}

func (e *env) get(name string) *openshellv1.Sandbox {
	e.t.Helper()
	resp, err := e.user.GetSandbox(context.Background(), &openshellv1.GetSandboxRequest{Name: name})
	if err != nil {
		e.t.Fatalf("GetSandbox(%s): %v", name, err)
	}
	return resp.GetSandbox()
}

// waitSandbox polls GetSandbox until ok holds, for up to 10 s; the failure names what
// was awaited and the sandbox's phase and conditions.
func (e *env) waitSandbox(name, what string, ok func(*openshellv1.Sandbox) bool) *openshellv1.Sandbox {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var sb *openshellv1.Sandbox
	for time.Now().Before(deadline) {
		sb = e.get(name)
		if ok(sb) {
			return sb
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.t.Fatalf("sandbox %s: %s (phase %v, conditions %v)", name, what, sb.GetStatus().GetPhase(), sb.GetStatus().GetConditions())
	return nil
}

// waitPhase polls GetSandbox until the phase matches (like the SDK's WaitReady).
func (e *env) waitPhase(name string, want openshellv1.SandboxPhase) *openshellv1.Sandbox {
	e.t.Helper()
	return e.waitSandbox(name, fmt.Sprintf("phase is not %v", want), func(sb *openshellv1.Sandbox) bool {
		return sb.GetStatus().GetPhase() == want
	})
}

// waitDriverSettled waits until the gateway has recorded the MemDriver's report that
// the backend runs: the sandbox then waits for a supervisor, and no driver event will
// bump its resource version behind a test's back.
func (e *env) waitDriverSettled(name string) *openshellv1.Sandbox {
	e.t.Helper()
	return e.waitSandbox(name, "the driver's report of a running backend was not recorded", func(sb *openshellv1.Sandbox) bool {
		return readyCondition(sb).GetReason() == drivers.ReasonSupervisorNotConnected
	})
}

func readyCondition(sb *openshellv1.Sandbox) *openshellv1.SandboxCondition {
	for _, c := range sb.GetStatus().GetConditions() {
		if c.GetType() == "Ready" {
			return c
		}
	}
	return nil
}

func wantCode(t testing.TB, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("error = %v, want code %v", err, code)
	}
}

// fakeSupervisor plays a sandbox supervisor: ConnectSupervisor with its token, and on
// relay_open a RelayStream that echoes every byte back.
type fakeSupervisor struct {
	cancel   context.CancelFunc
	accepted *openshellv1.SessionAccepted
	done     chan struct{}
	err      error
	opens    chan string // mode "bulk": each relay_open's channel id
}

// asInstance is ctx carrying the identity (instance id and its secret) of the fake
// supervisor instance that connectSupervisor opens.
func asInstance(ctx context.Context, instance string) context.Context {
	return session.Identity{InstanceID: instance, Secret: "secret-of-" + instance}.Outgoing(ctx)
}

func (e *env) connectSupervisor(id, instance string) *fakeSupervisor {
	e.t.Helper()
	return e.connectSupervisorMode(id, instance, "echo")
}

// connectSupervisorMode answers relay_open per mode: "echo" (RelayStream echoing
// bytes), "fail" (relay_open_result success=false), "ignore" (nothing), "bulk" (the
// channel id goes to opens).
func (e *env) connectSupervisorMode(id, instance, mode string) *fakeSupervisor {
	e.t.Helper()
	c := e.sandboxClient(id)
	ctx, cancel := context.WithCancel(context.Background())
	ctx = asInstance(ctx, instance)
	stream, err := c.ConnectSupervisor(ctx)
	if err != nil {
		cancel()
		e.t.Fatal(err)
	}
	if err := stream.Send(&openshellv1.SupervisorMessage{Payload: &openshellv1.SupervisorMessage_Hello{
		Hello: &openshellv1.SupervisorHello{SandboxId: id, InstanceId: instance}}}); err != nil {
		cancel()
		e.t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		cancel()
		e.t.Fatalf("ConnectSupervisor(%s): %v", id, err)
	}
	fs := &fakeSupervisor{cancel: cancel, accepted: first.GetSessionAccepted(), done: make(chan struct{}), opens: make(chan string, 8)}
	go func() {
		defer close(fs.done)
		for {
			m, err := stream.Recv()
			if err != nil {
				fs.err = err
				return
			}
			if ro := m.GetRelayOpen(); ro != nil {
				switch mode {
				case "echo":
					go echoRelay(ctx, c, ro.GetChannelId())
				case "bulk": // the test opens the relay itself, on a bulk stream
					fs.opens <- ro.GetChannelId()
				case "fail":
					_ = stream.Send(&openshellv1.SupervisorMessage{Payload: &openshellv1.SupervisorMessage_RelayOpenResult{
						RelayOpenResult: &openshellv1.RelayOpenResult{ChannelId: ro.GetChannelId(), Error: "connection refused by 127.0.0.1:8080"}}})
				}
			}
		}
	}()
	e.t.Cleanup(fs.close)
	return fs
}

func (f *fakeSupervisor) close() {
	f.cancel()
	<-f.done
}

func echoRelay(ctx context.Context, c openshellv1.OpenShellClient, channel string) {
	rs, err := c.RelayStream(ctx)
	if err != nil {
		return
	}
	if err := rs.Send(&openshellv1.RelayFrame{Payload: &openshellv1.RelayFrame_Init{Init: &openshellv1.RelayInit{ChannelId: channel}}}); err != nil {
		return
	}
	for {
		f, err := rs.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				_ = rs.CloseSend()
			}
			return
		}
		if err := rs.Send(&openshellv1.RelayFrame{Payload: &openshellv1.RelayFrame_Data{Data: f.GetData()}}); err != nil {
			return
		}
	}
}
