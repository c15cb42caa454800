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
}

func (watchEndsEarly) WatchSandbox(req *openshellv1.WatchSandboxRequest, stream openshellv1.OpenShell_WatchSandboxServer) error {
	sb := &openshellv1.Sandbox{Metadata: &datamodelv1.ObjectMeta{Id: req.GetId(), Name: "slow"},
		Status: &openshellv1.SandboxStatus{Phase: openshellv1.SandboxPhase_SANDBOX_PHASE_PROVISIONING}}
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
// even when the gateway's end of the stream arrives before this side's timer.
func TestWaitReadyTimeoutWhenTheStreamEndsFirst(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "gw.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	openshellv1.RegisterOpenShellServer(srv, watchEndsEarly{})
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	sb := &openshellv1.Sandbox{Metadata: &datamodelv1.ObjectMeta{Id: "id-1", Name: "slow"}}
	_, err = waitReady(context.Background(), openshellv1.NewOpenShellClient(cc), sb, 500*time.Millisecond, io.Discard)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 3 || !strings.Contains(err.Error(), "not ready after 500ms") {
		t.Fatalf("waitReady = %v, want the timeout (exit code 3, \"not ready after 500ms\")", err)
	}
}
