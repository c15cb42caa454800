package gateway_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/gateway"
)

func forwardInit(id string) *openshellv1.TcpForwardFrame {
	return &openshellv1.TcpForwardFrame{Payload: &openshellv1.TcpForwardFrame_Init{Init: &openshellv1.TcpForwardInit{SandboxId: id,
		Target: &openshellv1.TcpForwardInit_Tcp{Tcp: &openshellv1.TcpRelayTarget{Host: "127.0.0.1", Port: 8080}}}}}
}

// sendForward sends f on fs. io.EOF means the gateway has already ended the call
// (it refused the init): that is not the error, the call's status is, which the
// next Recv returns.
func sendForward(fs openshellv1.OpenShell_ForwardTcpClient, f *openshellv1.TcpForwardFrame) error {
	if err := fs.Send(f); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

// openForward starts a ForwardTcp and returns the first error (nil once data flows).
func openForward(ctx context.Context, e *env, id string) (openshellv1.OpenShell_ForwardTcpClient, error) {
	fs, err := e.user.ForwardTcp(ctx)
	if err != nil {
		return nil, err
	}
	if err := sendForward(fs, forwardInit(id)); err != nil {
		return nil, err
	}
	if err := sendForward(fs, &openshellv1.TcpForwardFrame{Payload: &openshellv1.TcpForwardFrame_Data{Data: []byte("x")}}); err != nil {
		return nil, err
	}
	if _, err := fs.Recv(); err != nil {
		return nil, err
	}
	return fs, nil
}

func TestRelayFailures(t *testing.T) {
	e := startEnvWith(t, t.TempDir(), drivertest.NewMemDriver(), 200*time.Millisecond, func(o *gateway.Options) {
		o.RelayOpenTimeout = 300 * time.Millisecond
		o.MaxRelaysPerSandbox = 1
	})
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()

	fail := e.create("fail").GetMetadata().GetId()
	e.connectSupervisorMode(fail, "i", "fail")
	e.waitPhase("fail", phaseReady)
	_, err := openForward(ctx, e, fail)
	wantCode(t, err, codes.Unavailable)
	if !strings.Contains(err.Error(), "connection refused by 127.0.0.1:8080") {
		t.Errorf("the supervisor's reason is lost: %v", err)
	}

	ignore := e.create("ignore").GetMetadata().GetId()
	e.connectSupervisorMode(ignore, "i", "ignore")
	e.waitPhase("ignore", phaseReady)
	start := time.Now()
	_, err = openForward(ctx, e, ignore)
	wantCode(t, err, codes.Unavailable)
	if d := time.Since(start); d > 5*time.Second || !strings.Contains(err.Error(), "did not open relay") {
		t.Errorf("unclaimed relay: %v after %s", err, d)
	}

	echo := e.create("echo").GetMetadata().GetId()
	e.connectSupervisor(echo, "i")
	e.waitPhase("echo", phaseReady)
	first, err := openForward(ctx, e, echo)
	if err != nil {
		t.Fatal(err)
	}
	_, err = openForward(ctx, e, echo)
	wantCode(t, err, codes.ResourceExhausted)
	// Closing the first relay frees the slot.
	first.CloseSend()
	for {
		if _, err := first.Recv(); err != nil {
			break
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		fs, err := openForward(ctx, e, echo)
		if err == nil {
			fs.CloseSend()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("relay slot never freed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestForwardTransferTarget: a transfer relay is authorised as an SSH session is
// (a CreateSshSession token for that sandbox) and its target is checked before any
// relay opens; a good one reaches the supervisor and carries bytes both ways.
func TestForwardTransferTarget(t *testing.T) {
	e := startEnv(t, t.TempDir(), drivertest.NewMemDriver())
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	id := e.create("xfer").GetMetadata().GetId()
	e.connectSupervisor(id, "i1")
	e.waitPhase("xfer", openshellv1.SandboxPhase_SANDBOX_PHASE_READY)
	sess, err := e.user.CreateSshSession(ctx, &openshellv1.CreateSshSessionRequest{SandboxId: id})
	if err != nil {
		t.Fatal(err)
	}
	try := func(tok string, dir openshellv1.TransferRelayTarget_Direction, path string) error {
		fs, err := e.user.ForwardTcp(ctx)
		if err != nil {
			return err
		}
		defer fs.CloseSend()
		init := &openshellv1.TcpForwardInit{SandboxId: id, AuthorizationToken: tok,
			Target: &openshellv1.TcpForwardInit_Transfer{Transfer: &openshellv1.TransferRelayTarget{Direction: dir, Path: path}}}
		if err := sendForward(fs, &openshellv1.TcpForwardFrame{Payload: &openshellv1.TcpForwardFrame_Init{Init: init}}); err != nil {
			return err
		}
		if err := sendForward(fs, &openshellv1.TcpForwardFrame{Payload: &openshellv1.TcpForwardFrame_Data{Data: []byte("tar")}}); err != nil {
			return err
		}
		f, err := fs.Recv()
		if err != nil {
			return err
		}
		if string(f.GetData()) != "tar" {
			t.Errorf("echo %q", f.GetData())
		}
		return nil
	}
	up := openshellv1.TransferRelayTarget_DIRECTION_UPLOAD
	if err := try(sess.GetToken(), up, "/sandbox/x"); err != nil {
		t.Fatalf("transfer relay with a session token: %v", err)
	}
	wantCode(t, try("", up, "/sandbox/x"), codes.Unauthenticated)
	wantCode(t, try("bogus", up, "/sandbox/x"), codes.Unauthenticated)
	for _, c := range []struct {
		dir  openshellv1.TransferRelayTarget_Direction
		path string
		want string
	}{
		{openshellv1.TransferRelayTarget_DIRECTION_UNSPECIFIED, "/sandbox/x", "init.transfer.direction"},
		{up, "", "init.transfer.path"},
		{openshellv1.TransferRelayTarget_DIRECTION_DOWNLOAD, "a\x00b", "init.transfer.path"},
	} {
		err := try(sess.GetToken(), c.dir, c.path)
		wantCode(t, err, codes.InvalidArgument)
		if err != nil && !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v %q: %v, want it to name %s", c.dir, c.path, err, c.want)
		}
	}
}

// TestRelayWaitsForReconnect: a relay to a running sandbox whose supervisor lost its
// session (a gateway restart, a dropped connection) waits for the supervisor to come
// back and then goes through; one that does not come back fails after the bound with
// the reason; a sandbox whose supervisor never connected is not waited for.
func TestRelayWaitsForReconnect(t *testing.T) {
	const bound = 2 * time.Second
	e := startEnvWith(t, t.TempDir(), drivertest.NewMemDriver(), time.Hour, func(o *gateway.Options) {
		o.SessionReturnWait = bound
	})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	id := e.create("back").GetMetadata().GetId()
	sup := e.connectSupervisor(id, "i1")
	e.waitSandbox("back", "no main process instance recorded", func(sb *openshellv1.Sandbox) bool {
		return sb.GetStatus().GetPhase() == phaseReady && sb.GetStatus().GetMainProcessInstanceId() == "i1"
	})

	lose := func() {
		t.Helper()
		sup.close()
		e.waitSandbox("back", "the session's end not seen", func(sb *openshellv1.Sandbox) bool {
			return readyCondition(sb).GetReason() == "SupervisorNotConnected"
		})
	}
	lose()
	const away = 400 * time.Millisecond
	type result struct {
		took time.Duration
		err  error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		fs, err := openForward(ctx, e, id)
		if err == nil {
			fs.CloseSend()
		}
		done <- result{time.Since(start), err}
	}()
	time.Sleep(away)
	sup = e.connectSupervisor(id, "i1")
	res := <-done
	took, err := res.took, res.err
	if err != nil {
		t.Fatalf("forward while the supervisor reconnects: %v (after %v)", err, took)
	}
	if took < away || took > bound {
		t.Errorf("the forward went through %v after it was asked for; the supervisor was back after %v", took, away)
	}

	lose()
	start = time.Now()
	_, err = openForward(ctx, e, id)
	took = time.Since(start)
	wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(err.Error(), "did not reconnect within") || took < bound || took > bound+time.Second {
		t.Errorf("no supervisor back: %v after %v, want the reason after %v", err, took, bound)
	}

	// Deleted while a forward waits for its supervisor: the forward is answered then,
	// not at the end of the wait.
	go func() {
		time.Sleep(away)
		if _, err := e.user.DeleteSandbox(ctx, &openshellv1.DeleteSandboxRequest{Name: "back"}); err != nil {
			t.Errorf("delete: %v", err)
		}
	}()
	start = time.Now()
	_, err = openForward(ctx, e, id)
	took = time.Since(start)
	if err == nil || strings.Contains(err.Error(), "did not reconnect") || took < away || took > bound-away/2 {
		t.Errorf("a sandbox deleted while the forward waited: %v after %v, want its new state at the delete (%v)", err, took, away)
	}

	// Never connected: still starting, refused at once (the user is told to wait).
	fresh := e.create("fresh").GetMetadata().GetId()
	e.waitSandbox("fresh", "backend not ready", func(sb *openshellv1.Sandbox) bool {
		return readyCondition(sb).GetReason() == "SupervisorNotConnected"
	})
	start = time.Now()
	_, err = openForward(ctx, e, fresh)
	wantCode(t, err, codes.FailedPrecondition)
	if took := time.Since(start); took > bound/2 || !strings.Contains(err.Error(), "wait for it") {
		t.Errorf("a sandbox still starting: %v after %v, want an immediate refusal", err, took)
	}
}
