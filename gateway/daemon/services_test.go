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

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/drivers/grpcdriver"
	"github.com/openshell/openshell/gateway/config"
)

// TestServicesListener: the gateway serves the services listener on the configured
// loopback port, returns URLs on it (path and host based), refuses a taken port naming
// services_port, and stops listening when it stops.
func TestServicesListener(t *testing.T) {
	tmp, err := os.MkdirTemp("", "gws")
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
	cfg.Socket = "none"
	cfg.ComputeDriverSocket = sock
	cfg.ServicesDomain = "svc.test"
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	// A taken port is refused, naming the setting.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.ServicesPort = taken.Addr().(*net.TCPAddr).Port
	if _, err := Start(t.Context(), &cfg, log); err == nil || !strings.Contains(err.Error(), "services_port") {
		t.Errorf("taken services port: %v, want an error naming services_port", err)
	}
	taken.Close()

	cfg.ServicesPort = freePort(t)
	g, err := Start(t.Context(), &cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			g.Stop(5 * time.Second)
		}
	}()
	cc, err := grpc.NewClient("passthrough:///"+g.Addr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := openshellv1.NewOpenShellClient(cc)
	if _, err := c.CreateSandbox(t.Context(), &openshellv1.CreateSandboxRequest{Name: "dev", Spec: &openshellv1.SandboxSpec{}}); err != nil {
		t.Fatal(err)
	}
	hp := "127.0.0.1:" + strconv.Itoa(cfg.ServicesPort)
	p, err := c.ExposeService(t.Context(), &openshellv1.ExposeServiceRequest{Sandbox: "dev", Service: "web", TargetPort: 8080})
	if err != nil || p.GetUrl() != "http://"+hp+"/dev/web/" {
		t.Fatalf("path URL: %v, %v", p, err)
	}
	d, err := c.ExposeService(t.Context(), &openshellv1.ExposeServiceRequest{Sandbox: "dev", Service: "api", TargetPort: 9000, Domain: true})
	if err != nil || d.GetUrl() != "http://api--dev.svc.test:"+strconv.Itoa(cfg.ServicesPort)+"/" {
		t.Fatalf("host URL: %v, %v", d, err)
	}
	get := func(host, path string) int {
		req, _ := http.NewRequest(http.MethodGet, "http://"+hp+path, nil)
		req.Host = host
		resp, err := (&http.Client{Timeout: 20 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// The sandbox has no supervisor here: routed, but the relay cannot open.
	if code := get(hp, "/dev/web/"); code != http.StatusBadGateway {
		t.Errorf("path route to a sandbox without a session: %d, want 502", code)
	}
	if code := get("api--dev.svc.test", "/"); code != http.StatusBadGateway {
		t.Errorf("host route: %d, want 502", code)
	}
	if code := get(hp, "/dev/nope/"); code != http.StatusNotFound {
		t.Errorf("unknown service: %d, want 404", code)
	}
	stopped = true
	if err := g.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if conn, err := net.DialTimeout("tcp", hp, time.Second); err == nil {
		conn.Close()
		t.Errorf("services listener %s still accepts after Stop", hp)
	}
}
