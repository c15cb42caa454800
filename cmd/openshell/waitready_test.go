package main

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/openshell/openshell/api/datamodelv1"
	"github.com/openshell/openshell/api/openshellv1"
)

// watchEndsEarly is a gateway whose watch sends one PROVISIONING snapshot and ends
// the stream cleanly a little before the deadline the client sent, as a gateway does
// when the wire rounds that deadline down.
type watchEndsEarly struct {
	openshellv1.UnimplementedOpenShellServer
	phase openshellv1.SandboxPhase // the one snapshot's
}

func (g watchEndsEarly) WatchSandbox(req *openshellv1.WatchSandboxRequest, stream openshellv1.OpenShell_WatchSandboxServer) error {
	sb := &openshellv1.Sandbox{Metadata: &datamodelv1.ObjectMeta{Id: req.GetId(), Name: "slow"},
		Status: &openshellv1.SandboxStatus{Phase: g.phase}}
	if err := stream.Send(&openshellv1.SandboxStreamEvent{Payload: &openshellv1.SandboxStreamEvent_Sandbox{Sandbox: sb}}); err != nil {
		return err
	}
	dl, ok := stream.Context().Deadline()
	if !ok {
		return errors.New("the client sent no deadline")
	}
	time.Sleep(time.Until(dl) - 20*time.Millisecond)
	return nil
}

// TestWaitReadyTimeoutWhenTheStreamEndsFirst: a create whose sandbox is still
// provisioning at --timeout says it timed out (exit code 3, the raise --timeout hint),
// even when the gateway's end of the stream arrives before this side's timer; one that
// became READY just before is READY.
func TestWaitReadyTimeoutWhenTheStreamEndsFirst(t *testing.T) {
	wait := func(phase openshellv1.SandboxPhase) (*openshellv1.Sandbox, error) {
		sock := filepath.Join(t.TempDir(), "gw.sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer()
		openshellv1.RegisterOpenShellServer(srv, watchEndsEarly{phase: phase})
		go srv.Serve(l)
		t.Cleanup(srv.Stop)
		cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		sb := &openshellv1.Sandbox{Metadata: &datamodelv1.ObjectMeta{Id: "id-1", Name: "slow"}}
		return waitReady(context.Background(), openshellv1.NewOpenShellClient(cc), sb, 500*time.Millisecond, io.Discard)
	}
	_, err := wait(openshellv1.SandboxPhase_SANDBOX_PHASE_PROVISIONING)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 3 || !strings.Contains(err.Error(), "not ready after 500ms") {
		t.Fatalf("waitReady = %v, want the timeout (exit code 3, \"not ready after 500ms\")", err)
	}
	if sb, err := wait(openshellv1.SandboxPhase_SANDBOX_PHASE_READY); err != nil || sb.GetStatus().GetPhase() != openshellv1.SandboxPhase_SANDBOX_PHASE_READY {
		t.Fatalf("a sandbox READY just before the deadline: waitReady = %v, %v; want it READY", sb, err)
	}
}
