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
	acceptAt    time.Time // when the session's accept was about to be sent
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
	g.mu.Lock()
	g.acceptAt = time.Now()
	g.mu.Unlock()
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

// TestCredentialsAfterTheSession: the credentials (whose CPU work competed with the
// gateway connection's set-up, the config call and the session's opening on a VM's
// emulated vCPUs) are loaded once the config call is answered and the session is up,
// not alongside them; a gateway that never accepts the session still gets asked for
// them after sessionFirst (the SSH server, the egress proxy and the main process wait
// for them).
func TestCredentialsAfterTheSession(t *testing.T) {
	asked := func(t *testing.T, g *orderGW) time.Time {
		t.Helper()
		select {
		case at := <-g.credsAt:
			return at
		case <-time.After(20 * time.Second):
			t.Fatal("the credentials were never asked for")
		}
		return time.Time{}
	}
	// Each gateway holds one answer back 400 ms; the credentials wait for it.
	for _, c := range []struct {
		what                     string
		configAfter, acceptAfter time.Duration
		answered                 func(*orderGW) time.Time
	}{
		{"the config", 400 * time.Millisecond, 0, func(g *orderGW) time.Time { return g.configAt }},
		{"the session", 0, 400 * time.Millisecond, func(g *orderGW) time.Time { return g.acceptAt }},
	} {
		t.Run("after "+c.what, func(t *testing.T) {
			g, addr := startOrderGW(t, c.configAfter, c.acceptAfter)
			runOrdered(t, addr)
			at := asked(t, g)
			g.mu.Lock()
			answered := c.answered(g)
			g.mu.Unlock()
			if answered.IsZero() || at.Before(answered) {
				t.Fatalf("credentials asked for at %v, %s answered at %v: they did not wait for it", at.Format(time.StampMicro), c.what, answered.Format(time.StampMicro))
			}
		})
	}
	t.Run("without a session", func(t *testing.T) {
		g, addr := startOrderGW(t, 0, -1)
		start := time.Now()
		runOrdered(t, addr)
		at := asked(t, g)
		if took := at.Sub(start); took < sessionFirst {
			t.Fatalf("credentials asked for %v after the start with no session: before sessionFirst (%v)", took, sessionFirst)
		}
	})
}
