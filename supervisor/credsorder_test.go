package supervisor

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/api/sandboxv1"
	"github.com/openshell/openshell/supervisor/bootstrap"
)

// orderGW is gw whose config answer and session accept can be held back, noting
// when the config was answered and when the credentials were asked for.
type orderGW struct {
	*gw
	configAfter time.Duration // GetSandboxConfig answers after this long
	acceptAfter time.Duration // the hello waits this long; < 0: never accepted
	mu          sync.Mutex
	configAt    time.Time
	credsAt     chan time.Time
}

func (g *orderGW) GetSandboxConfig(context.Context, *sandboxv1.GetSandboxConfigRequest) (*sandboxv1.GetSandboxConfigResponse, error) {
	time.Sleep(g.configAfter)
	g.mu.Lock()
	g.configAt = time.Now()
	g.mu.Unlock()
	return &sandboxv1.GetSandboxConfigResponse{Version: 1}, nil
}

func (g *orderGW) ConnectSupervisor(s grpc.BidiStreamingServer[pb.SupervisorMessage, pb.GatewayMessage]) error {
	if g.acceptAfter < 0 {
		<-s.Context().Done()
		return s.Context().Err()
	}
	time.Sleep(g.acceptAfter)
	return g.gw.ConnectSupervisor(s)
}

func (g *orderGW) GetSandboxProviderEnvironment(context.Context, *pb.GetSandboxProviderEnvironmentRequest) (*pb.GetSandboxProviderEnvironmentResponse, error) {
	select {
	case g.credsAt <- time.Now():
	default:
	}
	return &pb.GetSandboxProviderEnvironmentResponse{}, nil
}

func startOrderGW(t *testing.T, configAfter, acceptAfter time.Duration) (*orderGW, string) {
	t.Helper()
	g := &orderGW{gw: newGW(), configAfter: configAfter, acceptAfter: acceptAfter, credsAt: make(chan time.Time, 1)}
	addr, _ := serveGW(t, g, "127.0.0.1:0")
	return g, addr
}

func runOrdered(t *testing.T, addr string) {
	t.Helper()
	base := agentReachableDir(t, "supervisor-test-")
	root := rootOnlyRoot(t, base)
	cfg := &bootstrap.Config{Endpoint: "http://" + addr, SandboxID: "sb-1", SandboxName: "box", Token: "tok",
		Main: bootstrap.MainProcessSpec{Version: 1, Command: []string{"/bin/sh", "-c", "sleep 30"}}}
	runInBackground(t, cfg, Options{RunDir: filepath.Join(base, "run"), Root: root, SandboxDir: filepath.Join(base, "sandbox")})
}

// TestCredentialsAfterTheConfig: the credentials (whose CPU work competed with the
// gateway connection's set-up and the config call on a VM's one vCPU) are loaded once
// the config call is answered, not alongside it; and not after the session (the SSH
// server, the egress proxy and the main process wait for them): a gateway that never
// accepts the session still gets asked for them at once.
func TestCredentialsAfterTheConfig(t *testing.T) {
	t.Run("after the config", func(t *testing.T) {
		g, addr := startOrderGW(t, 400*time.Millisecond, 0)
		runOrdered(t, addr)
		var at time.Time
		select {
		case at = <-g.credsAt:
		case <-time.After(20 * time.Second):
			t.Fatal("the credentials were never asked for")
		}
		g.mu.Lock()
		answered := g.configAt
		g.mu.Unlock()
		if answered.IsZero() || at.Before(answered) {
			t.Fatalf("credentials asked for at %v, config answered at %v: they did not wait for the config", at.Format(time.StampMicro), answered.Format(time.StampMicro))
		}
	})
	t.Run("not after the session", func(t *testing.T) {
		g, addr := startOrderGW(t, 0, -1)
		start := time.Now()
		runOrdered(t, addr)
		select {
		case <-g.credsAt:
			t.Logf("credentials asked for %v after the start, with no session", time.Since(start).Round(time.Millisecond))
		case <-time.After(20 * time.Second):
			t.Fatal("without a session the credentials were never asked for")
		}
	})
}
