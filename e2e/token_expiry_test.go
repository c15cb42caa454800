package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/openshell/openshell/api/openshellv1"
)

// sshTTL is the session-token lifetime the gateway under test runs with.
const sshTTL = 2 * time.Second

// newHarnessEnv is newHarness with extra environment for the CLI and, through
// `gateway start`, for the gateway process it spawns.
func newHarnessEnv(t *testing.T, extra ...string) *harness {
	t.Helper()
	if testing.Short() {
		t.Skip("e2e builds the binaries and drives a real compute driver; not in -short")
	}
	requireDriver(t)
	bin := build(t)
	home, err := os.MkdirTemp(tmpRoot, "h")
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, bin: bin, home: home, port: freePort(t)}
	h.env = append(os.Environ(),
		"HOME="+home,
		"XDG_CONFIG_HOME="+filepath.Join(home, "config"),
		"XDG_STATE_HOME="+filepath.Join(home, "s"),
		"OPENSHELL_GATEWAY_BIN="+filepath.Join(bin, "openshell-gateway"),
		"PATH="+bin+":"+os.Getenv("PATH"),
	)
	h.env = append(h.env, extra...)
	h.startGateway()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		h.run(ctx, "sandbox", "delete", "--all")
		h.run(ctx, "gateway", "stop")
	})
	return h
}

// forwardSSH opens ForwardTcp to the sandbox's SSH endpoint with token and returns the
// first frame's data or the stream's error.
func forwardSSH(ctx context.Context, api pb.OpenShellClient, id, token string) ([]byte, error) {
	fw, err := api.ForwardTcp(ctx)
	if err != nil {
		return nil, err
	}
	defer fw.CloseSend()
	if err := fw.Send(&pb.TcpForwardFrame{Payload: &pb.TcpForwardFrame_Init{Init: &pb.TcpForwardInit{
		SandboxId: id, Target: &pb.TcpForwardInit_Ssh{Ssh: &pb.SshRelayTarget{}}, AuthorizationToken: token}}}); err != nil {
		return nil, err
	}
	f, err := fw.Recv()
	if err != nil {
		return nil, err
	}
	return f.GetData(), nil
}

// TestSSHSessionTokenExpires: with OPENSHELL_SSH_SESSION_TTL=2s a session token works
// at once and is refused — UNAUTHENTICATED, saying it expired — once 2 s have passed.
func TestSSHSessionTokenExpires(t *testing.T) {
	h := newHarnessEnv(t, "OPENSHELL_SSH_SESSION_TTL="+sshTTL.String())
	box := uniqueName("ttl")
	h.create(box, "sleep", "100000")
	api := pb.NewOpenShellClient(h.dial(t))
	sb, err := api.GetSandbox(t.Context(), &pb.GetSandboxRequest{Name: box})
	if err != nil {
		t.Fatal(err)
	}
	id := sb.GetSandbox().GetMetadata().GetId()

	sess, err := api.CreateSshSession(t.Context(), &pb.CreateSshSessionRequest{SandboxId: id})
	if err != nil {
		t.Fatalf("CreateSshSession: %v", err)
	}
	issued := time.Now()
	if left := time.UnixMilli(sess.GetExpiresAtMs()).Sub(issued); left <= 0 || left > sshTTL+500*time.Millisecond {
		t.Fatalf("token expires in %v; the gateway did not take the %v TTL from OPENSHELL_SSH_SESSION_TTL", left, sshTTL)
	}

	// Control: the fresh token reaches the supervisor's SSH endpoint (its banner).
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	data, err := forwardSSH(ctx, api, id, sess.GetToken())
	cancel()
	if err != nil || !strings.HasPrefix(string(data), "SSH-") {
		t.Fatalf("forward with a fresh token: data %q, err %v", data, err)
	}

	time.Sleep(time.Until(issued.Add(sshTTL + time.Second)))
	ctx, cancel = context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err = forwardSSH(ctx, api, id, sess.GetToken())
	took := time.Since(start)
	t.Logf("expired token refused after %v: %v", took.Round(time.Millisecond), err)
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(status.Convert(err).Message(), "expired") {
		t.Fatalf("forward with an expired token: %v; want UNAUTHENTICATED saying the token expired", err)
	}
	if took > 5*time.Second {
		t.Errorf("refusal took %v; want well under 5 s", took)
	}
}
