package supervisor

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/supervisor/bootstrap"
)

// orderGW is gw whose session accept can be held back, noting when the session was
// accepted and when the credentials were asked for.
type orderGW struct {
	*gw
	acceptAfter time.Duration // the hello waits this long; < 0: never accepted
	mu          sync.Mutex
	acceptedAt  time.Time
	credsAt     chan time.Time
}

func (g *orderGW) ConnectSupervisor(s grpc.BidiStreamingServer[pb.SupervisorMessage, pb.GatewayMessage]) error {
	if g.acceptAfter < 0 {
		<-s.Context().Done()
		return s.Context().Err()
	}
	time.Sleep(g.acceptAfter)
	g.mu.Lock()
	g.acceptedAt = time.Now()
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

func startOrderGW(t *testing.T, acceptAfter time.Duration) (*orderGW, string) {
	t.Helper()
	g := &orderGW{gw: newGW(), acceptAfter: acceptAfter, credsAt: make(chan time.Time, 1)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	pb.RegisterOpenShellServer(s, g)
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	return g, ln.Addr().String()
}

func runOrdered(t *testing.T, addr string) {
	t.Helper()
	// Not t.TempDir: the sandbox user must be able to reach the sandbox directory.
	base, err := os.MkdirTemp("", "supervisor-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	root := filepath.Join(base, "root")
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc", "passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	cfg := &bootstrap.Config{Endpoint: "http://" + addr, SandboxID: "sb-1", SandboxName: "box", Token: "tok",
		Main: bootstrap.MainProcessSpec{Version: 1, Command: []string{"/bin/sh", "-c", "sleep 30"}}}
	runInBackground(t, cfg, Options{RunDir: filepath.Join(base, "run"), Root: root, SandboxDir: filepath.Join(base, "sandbox")})
}

// TestCredentialsWaitForTheSession: the credentials (whose CPU work competed with
// the session's set-up on a VM's one vCPU) are loaded once the session is up, not
// alongside it; a gateway that never accepts the session holds them up for
// credentialsHoldoff only.
func TestCredentialsWaitForTheSession(t *testing.T) {
	t.Run("after the accept", func(t *testing.T) {
		g, addr := startOrderGW(t, 400*time.Millisecond)
		runOrdered(t, addr)
		var at time.Time
		select {
		case at = <-g.credsAt:
		case <-time.After(20 * time.Second):
			t.Fatal("the credentials were never asked for")
		}
		g.mu.Lock()
		accepted := g.acceptedAt
		g.mu.Unlock()
		if accepted.IsZero() || at.Before(accepted) {
			t.Fatalf("credentials asked for at %v, session accepted at %v: they did not wait for the session", at.Format(time.StampMicro), accepted.Format(time.StampMicro))
		}
	})
	t.Run("no session", func(t *testing.T) {
		g, addr := startOrderGW(t, -1)
		start := time.Now()
		runOrdered(t, addr)
		select {
		case at := <-g.credsAt:
			if took := at.Sub(start); took < credentialsHoldoff/2 {
				t.Fatalf("credentials asked for %v after the start, before the holdoff (%v)", took, credentialsHoldoff)
			}
		case <-time.After(credentialsHoldoff + 20*time.Second):
			t.Fatal("without a session the credentials were never asked for: the start is stuck")
		}
	})
}
