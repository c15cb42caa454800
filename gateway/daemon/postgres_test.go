package daemon

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/drivers/grpcdriver"
	"github.com/openshell/openshell/gateway/config"
	"github.com/openshell/openshell/gateway/store/postgres/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// TestPostgresRestart runs the gateway on a real PostgreSQL database, restarts it (a
// new process would do the same) and finds the sandbox again.
func TestPostgresRestart(t *testing.T) {
	dsn := pgtest.DSN(t)
	tmp, err := os.MkdirTemp("", "gwp")
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
	cfg.DatabaseURL = dsn
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	start := func() (*Gateway, openshellv1.OpenShellClient) {
		g, err := Start(t.Context(), &cfg, log)
		if err != nil {
			t.Fatal(err)
		}
		cc, err := grpc.NewClient("passthrough:///"+g.Addr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return g, openshellv1.NewOpenShellClient(cc)
	}
	g, c := start()
	if _, err := c.CreateSandbox(t.Context(), &openshellv1.CreateSandboxRequest{Name: "pg", Spec: &openshellv1.SandboxSpec{}}); err != nil {
		t.Fatal(err)
	}
	if err := g.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	g, c = start()
	defer g.Stop(5 * time.Second)
	resp, err := c.GetSandbox(t.Context(), &openshellv1.GetSandboxRequest{Name: "pg"})
	if err != nil {
		t.Fatalf("sandbox lost across a restart on PostgreSQL: %v", err)
	}
	if resp.GetSandbox().GetStatus().GetPhase() != openshellv1.SandboxPhase_SANDBOX_PHASE_PROVISIONING {
		t.Errorf("phase = %v", resp.GetSandbox().GetStatus().GetPhase())
	}
}
