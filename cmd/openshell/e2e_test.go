package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/drivers/grpcdriver"
	"github.com/openshell/openshell/gateway/config"
	"github.com/openshell/openshell/gateway/pki"
	"github.com/openshell/openshell/supervisor/session"
)

// runCLI runs the CLI in-process and returns stdout, stderr and the error.
func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root, a := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(t.Context())
	if err != nil {
		return out.String(), &cliErr{msg: humanize(err, a.gateway), err: err}
	}
	return out.String(), nil
}

type cliErr struct {
	msg string
	err error
}

func (e *cliErr) Error() string { return e.msg }

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestCLIEndToEnd builds the real openshell-gateway, starts it in the background with
// `gateway start` attached to a MemDriver served over the compute-driver socket, and
// drives it with the CLI; a goroutine plays the sandbox supervisor with the token the
// driver received.
func TestCLIEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the gateway binary")
	}
	tmp := cliEnv(t, "openshell-gateway")
	var err error

	drv := drivertest.NewMemDriver()
	sock := filepath.Join(tmp, "drv.sock")
	lis, err := grpcdriver.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { grpcdriver.Serve(sctx, lis, drv); close(served) }()
	t.Cleanup(func() { scancel(); <-served })

	// Not configured yet: a clear message.
	_, err = runCLI(t, "sandbox", "list")
	if err == nil || !strings.Contains(err.Error(), "openshell gateway start") {
		t.Fatalf("unconfigured gateway: %v", err)
	}

	port := freePort(t)
	out, err := runCLI(t, "gateway", "start", "--compute-driver-socket", sock, "--port", strconv.Itoa(port))
	if err != nil {
		t.Fatalf("gateway start: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := runCLI(t, "gateway", "stop"); err != nil {
			t.Errorf("gateway stop: %v %s", err, out)
		}
	})
	stateDir := filepath.Join(tmp, "state", "openshell", "gateway")
	if _, err := os.Stat(filepath.Join(stateDir, "gateway.pid")); err != nil {
		t.Errorf("pid file: %v", err)
	}
	for _, f := range []string{"endpoint", "ca.crt", "client.crt", "client.key"} {
		if _, err := os.Stat(filepath.Join(tmp, "config", "openshell", "gateways", "default", f)); err != nil {
			t.Errorf("client file %s: %v", f, err)
		}
	}
	if _, err := runCLI(t, "gateway", "start", "--compute-driver-socket", sock, "--port", strconv.Itoa(port)); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second start: %v", err)
	}

	out, err = runCLI(t, "gateway", "status", "-o", "json")
	if err != nil {
		t.Fatalf("status: %v %s", err, out)
	}
	var st gatewayStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil || !st.Healthy || st.Driver != "external" || st.PID == 0 {
		t.Fatalf("status = %+v (%v) from %s", st, err, out)
	}

	// Play the supervisor once the driver has the sandbox.
	bundle, err := pki.Ensure(config.PKIDir(stateDir), nil)
	if err != nil {
		t.Fatal(err)
	}
	supDone := make(chan error, 1)
	go func() { supDone <- superviseFirst(t.Context(), drv, bundle, port) }()

	out, err = runCLI(t, "sandbox", "create", "--name", "alpha", "--label", "team=a", "--env", "A=1", "--timeout", "20s", "-o", "json", "--", "sleep", "infinity")
	if err != nil {
		t.Fatalf("create: %v\n%s", err, out)
	}
	var created map[string]any
	if err := json.Unmarshal([]byte(out), &created); err != nil {
		t.Fatalf("create output is not JSON: %v\n%s", err, out)
	}
	if ph := created["status"].(map[string]any)["phase"]; ph != "SANDBOX_PHASE_READY" {
		t.Errorf("created phase = %v", ph)
	}

	out, err = runCLI(t, "sandbox", "list")
	if err != nil || !strings.Contains(out, "alpha") || !strings.Contains(out, "READY") {
		t.Fatalf("list: %v\n%s", err, out)
	}
	// Completion asks the gateway for sandbox names, and lists registered gateways.
	out, err = runCLI(t, "__complete", "sandbox", "get", "al")
	if err != nil || !strings.Contains(out, "alpha\n") {
		t.Errorf("completion of sandbox names: %v\n%s", err, out)
	}
	out, err = runCLI(t, "__complete", "sandbox", "delete", "alpha", "")
	if err != nil || strings.Contains(out, "alpha\n") {
		t.Errorf("delete completion offers a name already given: %v\n%s", err, out)
	}
	out, err = runCLI(t, "__complete", "--gateway", "")
	if err != nil || !strings.Contains(out, "default\n") {
		t.Errorf("completion of gateway names: %v\n%s", err, out)
	}
	// OPENSHELL_GATEWAY picks the gateway; -g overrides it.
	t.Setenv("OPENSHELL_GATEWAY", "elsewhere")
	if _, err := runCLI(t, "sandbox", "list"); err == nil || !strings.Contains(err.Error(), `gateway "elsewhere" is not configured`) {
		t.Errorf("OPENSHELL_GATEWAY=elsewhere: %v", err)
	}
	if out, err := runCLI(t, "-g", "default", "sandbox", "list"); err != nil || !strings.Contains(out, "alpha") {
		t.Errorf("-g default with OPENSHELL_GATEWAY set: %v\n%s", err, out)
	}
	os.Unsetenv("OPENSHELL_GATEWAY")

	out, err = runCLI(t, "sandbox", "list", "-o", "yaml", "--selector", "team=b")
	if err != nil || strings.Contains(out, "alpha") {
		t.Fatalf("list with selector: %v\n%s", err, out)
	}
	out, err = runCLI(t, "sandbox", "get", "alpha")
	if err != nil || !strings.Contains(out, "sleep infinity") {
		t.Fatalf("get: %v\n%s", err, out)
	}
	_, err = runCLI(t, "sandbox", "get", "nope")
	if err == nil || !strings.Contains(err.Error(), "sandbox list") {
		t.Errorf("get missing: %v", err)
	}
	_, err = runCLI(t, "sandbox", "create", "--name", "Bad_Name")
	if err == nil || !strings.Contains(err.Error(), "--name") {
		t.Errorf("bad name: %v", err)
	}
	_, err = runCLI(t, "sandbox", "create", "--name", "x", "--env", "1A=b")
	if err == nil || !strings.Contains(err.Error(), "--env") {
		t.Errorf("bad env: %v", err)
	}
	out, err = runCLI(t, "sandbox", "delete", "alpha")
	if err != nil || !strings.Contains(out, "deleted") {
		t.Fatalf("delete: %v\n%s", err, out)
	}
	out, _ = runCLI(t, "sandbox", "list", "-o", "json")
	if strings.Contains(out, "alpha") {
		t.Fatalf("still listed after delete: %s", out)
	}
	select {
	case err := <-supDone:
		if err != nil {
			t.Errorf("supervisor: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("the supervisor session did not end when its sandbox was deleted")
	}
}

// cliEnv isolates HOME and the XDG dirs in a short temp dir (Unix socket paths are
// short), builds the named commands into tmp and points the CLI at the gateway binary.
func cliEnv(t *testing.T, cmds ...string) string {
	t.Helper()
	tmp, err := os.MkdirTemp("", "osh")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	// Keep the Go caches where they are: the build below would be cold otherwise.
	goenv, err := exec.Command("go", "env", "GOCACHE", "GOMODCACHE", "GOPATH").Output()
	if err != nil {
		t.Fatal(err)
	}
	ge := strings.Split(strings.TrimSpace(string(goenv)), "\n")
	t.Setenv("GOCACHE", ge[0])
	t.Setenv("GOMODCACHE", ge[1])
	t.Setenv("GOPATH", ge[2])
	t.Setenv("HOME", tmp)
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(tmp, "config"))
	t.Setenv("XDG_STATE_HOME", filepath.Join(tmp, "state"))

	for _, c := range cmds {
		if err := os.Link(builtCommand(t, c), filepath.Join(tmp, c)); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("OPENSHELL_GATEWAY_BIN", filepath.Join(tmp, "openshell-gateway"))

	return tmp
}

// built holds the commands this test process built, once each (linking the gateway
// takes ~20 s here); TestMain removes the directory.
var built struct {
	sync.Mutex
	dir  string
	bins map[string]string
}

// builtCommand builds cmd/<name> once per test process and returns its path.
func builtCommand(t *testing.T, name string) string {
	t.Helper()
	built.Lock()
	defer built.Unlock()
	if p, ok := built.bins[name]; ok {
		return p
	}
	if built.dir == "" {
		dir, err := os.MkdirTemp("", "osh-bin")
		if err != nil {
			t.Fatal(err)
		}
		built.dir, built.bins = dir, map[string]string{}
	}
	p := filepath.Join(built.dir, name)
	build := exec.Command("go", "build", "-o", p, "github.com/openshell/openshell/cmd/"+name)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", name, err, out)
	}
	built.bins[name] = p
	return p
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

// superviseFirst waits for the first sandbox to reach the driver, then connects as its
// supervisor until the session ends.
func superviseFirst(ctx context.Context, drv *drivertest.MemDriver, bundle *pki.Bundle, port int) error {
	var id, tok string
	for ctx.Err() == nil && tok == "" {
		list, _ := drv.List(ctx)
		if len(list) > 0 {
			id = list[0].GetId()
			tok = drv.Spec(id).GetSandboxToken()
		}
		time.Sleep(20 * time.Millisecond)
	}
	cc, err := grpc.NewClient("passthrough:///127.0.0.1:"+strconv.Itoa(port),
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: bundle.CertPool(), ServerName: "host.openshell.internal"})),
		grpc.WithPerRPCCredentials(bearer(tok)))
	if err != nil {
		return err
	}
	defer cc.Close()
	stream, err := openshellv1.NewOpenShellClient(cc).ConnectSupervisor(session.Identity{InstanceID: "i", Secret: "s"}.Outgoing(ctx))
	if err != nil {
		return err
	}
	if err := stream.Send(&openshellv1.SupervisorMessage{Payload: &openshellv1.SupervisorMessage_Hello{Hello: &openshellv1.SupervisorHello{SandboxId: id, InstanceId: "i"}}}); err != nil {
		return err
	}
	for {
		if _, err := stream.Recv(); err != nil {
			return nil
		}
	}
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return true }
