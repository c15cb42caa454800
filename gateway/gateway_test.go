package gateway_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/api/sandboxv1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/supervisor/session"
)

const (
	phaseProvisioning = openshellv1.SandboxPhase_SANDBOX_PHASE_PROVISIONING
	phaseReady        = openshellv1.SandboxPhase_SANDBOX_PHASE_READY
	phaseError        = openshellv1.SandboxPhase_SANDBOX_PHASE_ERROR
	phaseStopped      = openshellv1.SandboxPhase_SANDBOX_PHASE_STOPPED
)

func TestCreateGetListDelete(t *testing.T) {
	e := startEnv(t, t.TempDir(), drivertest.NewMemDriver())
	ctx := t.Context()
	sb := e.create("alpha")
	if sb.GetMetadata().GetId() == "" || sb.GetMetadata().GetWorkspace() != "default" {
		t.Fatalf("metadata not filled: %v", sb.GetMetadata())
	}
	if p := sb.GetStatus().GetPhase(); p != phaseProvisioning {
		t.Errorf("phase after create = %v, want PROVISIONING", p)
	}
	// No command: none is invented (the supervisor picks the image's shell), on a PTY.
	if got := sb.GetSpec().GetCommand(); len(got) != 0 || !sb.GetSpec().GetTty() {
		t.Errorf("default command = %v tty=%v, want none on a tty", got, sb.GetSpec().GetTty())
	}
	// The driver received the token and the mapped spec.
	spec := e.drv.Spec(sb.GetMetadata().GetId())
	if spec.GetSandboxToken() == "" || spec.GetTemplate().GetImage() != "test:1" {
		t.Errorf("driver spec = %v", spec)
	}
	if id, err := e.issuer.Verify(spec.GetSandboxToken()); err != nil || id != sb.GetMetadata().GetId() {
		t.Errorf("driver token verifies to %q, %v", id, err)
	}

	// Default image from the driver's capabilities.
	resp, err := e.user.CreateSandbox(ctx, &openshellv1.CreateSandboxRequest{Name: "beta", Labels: map[string]string{"team": "x"}, Spec: &openshellv1.SandboxSpec{}})
	if err != nil {
		t.Fatal(err)
	}
	caps, _ := e.drv.Capabilities(ctx)
	if img := resp.GetSandbox().GetSpec().GetTemplate().GetImage(); img != caps.GetDefaultImage() {
		t.Errorf("image = %q, want driver default %q", img, caps.GetDefaultImage())
	}

	_, err = e.user.CreateSandbox(ctx, &openshellv1.CreateSandboxRequest{Name: "alpha", Spec: &openshellv1.SandboxSpec{}})
	wantCode(t, err, codes.AlreadyExists)
	_, err = e.user.CreateSandbox(ctx, &openshellv1.CreateSandboxRequest{Name: "Bad_Name", Spec: &openshellv1.SandboxSpec{}})
	wantCode(t, err, codes.InvalidArgument)
	if !strings.Contains(err.Error(), "name") || !strings.Contains(err.Error(), "DNS label") {
		t.Errorf("bad-name error does not explain the rule: %v", err)
	}
	_, err = e.user.CreateSandbox(ctx, &openshellv1.CreateSandboxRequest{Name: "gamma"})
	wantCode(t, err, codes.InvalidArgument)

	got := e.get("alpha")
	if got.GetMetadata().GetId() != sb.GetMetadata().GetId() {
		t.Errorf("get returned another sandbox")
	}
	_, err = e.user.GetSandbox(ctx, &openshellv1.GetSandboxRequest{Name: "nope"})
	wantCode(t, err, codes.NotFound)
	_, err = e.user.GetSandbox(ctx, &openshellv1.GetSandboxRequest{})
	wantCode(t, err, codes.InvalidArgument)

	list, err := e.user.ListSandboxes(ctx, &openshellv1.ListSandboxesRequest{})
	if err != nil || len(list.GetSandboxes()) != 2 {
		t.Fatalf("list = %d, %v", len(list.GetSandboxes()), err)
	}
	list, err = e.user.ListSandboxes(ctx, &openshellv1.ListSandboxesRequest{LabelSelector: "team=x"})
	if err != nil || len(list.GetSandboxes()) != 1 || list.GetSandboxes()[0].GetMetadata().GetName() != "beta" {
		t.Fatalf("selector list = %v, %v", list.GetSandboxes(), err)
	}
	_, err = e.user.ListSandboxes(ctx, &openshellv1.ListSandboxesRequest{AllWorkspaces: true, Workspace: "x"})
	wantCode(t, err, codes.InvalidArgument)
	_, err = e.user.ListSandboxes(ctx, &openshellv1.ListSandboxesRequest{LabelSelector: "a b"})
	wantCode(t, err, codes.InvalidArgument)

	if _, err := e.user.DeleteSandbox(ctx, &openshellv1.DeleteSandboxRequest{Name: "alpha"}); err != nil {
		t.Fatal(err)
	}
	_, err = e.user.GetSandbox(ctx, &openshellv1.GetSandboxRequest{Name: "alpha"})
	wantCode(t, err, codes.NotFound)
	if _, err := e.drv.Get(ctx, sb.GetMetadata().GetId(), "alpha"); !errors.Is(err, drivers.ErrNotFound) {
		t.Errorf("driver still has the sandbox: %v", err)
	}
	_, err = e.user.DeleteSandbox(ctx, &openshellv1.DeleteSandboxRequest{Name: "alpha"})
	wantCode(t, err, codes.NotFound)
}

func TestReadyRequiresSupervisorSession(t *testing.T) {
	e := startEnv(t, t.TempDir(), drivertest.NewMemDriver())
	sb := e.create("alpha")
	id := sb.GetMetadata().GetId()

	// The backend becomes ready (MemDriver, 20 ms) but no supervisor is connected.
	deadline := time.Now().Add(5 * time.Second)
	for {
		cur := e.get("alpha")
		if c := readyCondition(cur); c != nil && c.GetReason() == drivers.ReasonSupervisorNotConnected {
			if cur.GetStatus().GetPhase() != phaseProvisioning {
				t.Fatalf("backend ready without session: phase %v, want PROVISIONING", cur.GetStatus().GetPhase())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never saw Ready/False/SupervisorNotConnected: %v", cur.GetStatus())
		}
		time.Sleep(10 * time.Millisecond)
	}

	sup := e.connectSupervisor(id, "inst-1")
	if sup.accepted.GetSessionId() == "" || sup.accepted.GetHeartbeatIntervalSecs() != 15 {
		t.Errorf("session_accepted = %v", sup.accepted)
	}
	ready := e.waitPhase("alpha", phaseReady)
	if c := readyCondition(ready); c.GetStatus() != "True" || c.GetReason() != drivers.ReasonDependenciesReady {
		t.Errorf("ready condition = %v", c)
	}

	// A newer session supersedes the older one; the sandbox stays READY.
	sup2 := e.connectSupervisor(id, "inst-1")
	select {
	case <-sup.done:
	case <-time.After(5 * time.Second):
		t.Fatal("old session was not ended when a new one connected")
	}
	e.waitPhase("alpha", phaseReady)

	// Session loss → PROVISIONING.
	sup2.close()
	e.waitPhase("alpha", phaseProvisioning)
}

func TestHelloRules(t *testing.T) {
	e := startEnv(t, t.TempDir(), drivertest.NewMemDriver())
	id := e.create("alpha").GetMetadata().GetId()
	c := e.sandboxClient(id)
	stream, err := c.ConnectSupervisor(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(&openshellv1.SupervisorMessage{Payload: &openshellv1.SupervisorMessage_Heartbeat{Heartbeat: &openshellv1.SupervisorHeartbeat{}}})
	_, err = stream.Recv()
	wantCode(t, err, codes.InvalidArgument)
}

func TestTokenScoping(t *testing.T) {
	e := startEnv(t, t.TempDir(), drivertest.NewMemDriver())
	ctx := t.Context()
	a := e.create("alpha").GetMetadata().GetId()
	b := e.create("beta").GetMetadata().GetId()
	sa := e.sandboxClient(a)

	// A sandbox token on user RPCs.
	_, err := sa.GetSandbox(ctx, &openshellv1.GetSandboxRequest{Name: "alpha"})
	wantCode(t, err, codes.PermissionDenied)
	_, err = sa.ListSandboxes(ctx, &openshellv1.ListSandboxesRequest{})
	wantCode(t, err, codes.PermissionDenied)

	// ... on another sandbox's callbacks.
	_, err = sa.ReportMainProcessExit(ctx, &openshellv1.ReportMainProcessExitRequest{SandboxId: b, InstanceId: "x", ExitCode: 1})
	wantCode(t, err, codes.PermissionDenied)
	_, err = sa.GetSandboxConfig(ctx, &sandboxv1.GetSandboxConfigRequest{SandboxId: b})
	wantCode(t, err, codes.PermissionDenied)
	stream, err := sa.ConnectSupervisor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(&openshellv1.SupervisorMessage{Payload: &openshellv1.SupervisorMessage_Hello{Hello: &openshellv1.SupervisorHello{SandboxId: b, InstanceId: "i"}}})
	_, err = stream.Recv()
	wantCode(t, err, codes.PermissionDenied)
	push, err := sa.PushSandboxLogs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	push.Send(&openshellv1.PushSandboxLogsRequest{SandboxId: b, Logs: []*openshellv1.SandboxLogLine{{Message: "spoof"}}})
	_, err = push.CloseAndRecv()
	wantCode(t, err, codes.PermissionDenied)

	// ... its own callbacks work.
	if _, err := sa.GetSandboxConfig(ctx, &sandboxv1.GetSandboxConfigRequest{SandboxId: a}); err != nil {
		t.Errorf("own GetSandboxConfig: %v", err)
	}

	// A user certificate on sandbox RPCs.
	_, err = e.user.ReportMainProcessExit(ctx, &openshellv1.ReportMainProcessExitRequest{SandboxId: a, InstanceId: "x"})
	wantCode(t, err, codes.PermissionDenied)
	us, err := e.user.ConnectSupervisor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	us.Send(&openshellv1.SupervisorMessage{Payload: &openshellv1.SupervisorMessage_Hello{Hello: &openshellv1.SupervisorHello{SandboxId: a}}})
	_, err = us.Recv()
	wantCode(t, err, codes.PermissionDenied)
	// GetSandboxConfig is dual: users may call it.
	if _, err := e.user.GetSandboxConfig(ctx, &sandboxv1.GetSandboxConfigRequest{SandboxId: a}); err != nil {
		t.Errorf("user GetSandboxConfig: %v", err)
	}

	// A forged token.
	bad := e.client(&tls.Config{RootCAs: e.bundle.CertPool(), MinVersion: tls.VersionTLS13}, "not-a-token")
	_, err = bad.ReportMainProcessExit(ctx, &openshellv1.ReportMainProcessExitRequest{SandboxId: a, InstanceId: "x"})
	wantCode(t, err, codes.Unauthenticated)
}

func TestMTLSRequiresClientCertificate(t *testing.T) {
	e := startEnv(t, t.TempDir(), drivertest.NewMemDriver())
	anon := e.client(&tls.Config{RootCAs: e.bundle.CertPool(), MinVersion: tls.VersionTLS13}, "")
	if _, err := anon.Health(t.Context(), &openshellv1.HealthRequest{}); err != nil {
		t.Fatalf("Health must be unauthenticated: %v", err)
	}
	_, err := anon.ListSandboxes(t.Context(), &openshellv1.ListSandboxesRequest{})
	wantCode(t, err, codes.Unauthenticated)
	_, err = anon.CreateSandbox(t.Context(), &openshellv1.CreateSandboxRequest{Name: "x", Spec: &openshellv1.SandboxSpec{}})
	wantCode(t, err, codes.Unauthenticated)
}

func TestRestartKeepsSandboxes(t *testing.T) {
	dir := t.TempDir()
	drv := drivertest.NewMemDriver() // the "platform": it outlives the gateway
	e := startEnv(t, dir, drv)
	a := e.create("alpha").GetMetadata().GetId()
	e.create("beta")
	e.connectSupervisor(a, "inst-1")
	e.waitPhase("alpha", phaseReady)
	if _, err := e.user.StopSandbox(t.Context(), &openshellv1.StopSandboxRequest{Name: "beta"}); err != nil {
		t.Fatal(err)
	}
	e.stop()

	e2 := startEnv(t, dir, drv)
	list, err := e2.user.ListSandboxes(t.Context(), &openshellv1.ListSandboxesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	phases := map[string]openshellv1.SandboxPhase{}
	for _, sb := range list.GetSandboxes() {
		phases[sb.GetMetadata().GetName()] = sb.GetStatus().GetPhase()
	}
	// No supervisor has reconnected yet: alpha is PROVISIONING, beta stays STOPPED.
	if phases["alpha"] != phaseProvisioning || phases["beta"] != phaseStopped || len(phases) != 2 {
		t.Fatalf("after restart phases = %v", phases)
	}
	e2.connectSupervisor(a, "inst-1")
	e2.waitPhase("alpha", phaseReady)
}

func TestStopStart(t *testing.T) {
	e := startEnv(t, t.TempDir(), drivertest.NewMemDriver())
	id := e.create("alpha").GetMetadata().GetId()
	sup := e.connectSupervisor(id, "i1")
	e.waitPhase("alpha", phaseReady)
	resp, err := e.user.StopSandbox(t.Context(), &openshellv1.StopSandboxRequest{Name: "alpha"})
	if err != nil || resp.GetSandbox().GetStatus().GetPhase() != phaseStopped {
		t.Fatalf("stop = %v, %v", resp.GetSandbox().GetStatus().GetPhase(), err)
	}
	sup.close() // the supervisor dies with the workload
	// An exit report during a stop is ignored.
	if _, err := e.sandboxClient(id).ReportMainProcessExit(asInstance(t.Context(), "i1"), &openshellv1.ReportMainProcessExitRequest{SandboxId: id, InstanceId: "i1", ExitCode: 143}); err != nil {
		t.Fatal(err)
	}
	e.waitPhase("alpha", phaseStopped)
	resp, err = e.user.StartSandbox(t.Context(), &openshellv1.StartSandboxRequest{Name: "alpha"})
	if err != nil {
		t.Fatal(err)
	}
	if p := resp.GetSandbox().GetStatus().GetPhase(); p != openshellv1.SandboxPhase_SANDBOX_PHASE_STARTING && p != phaseProvisioning {
		t.Errorf("phase after start = %v", p)
	}
	e.connectSupervisor(id, "i2")
	e.waitPhase("alpha", phaseReady)
}

func TestMainProcessExit(t *testing.T) {
	e := startEnv(t, t.TempDir(), drivertest.NewMemDriver())
	id := e.create("alpha").GetMetadata().GetId()
	e.connectSupervisor(id, "i1")
	e.waitPhase("alpha", phaseReady)
	sc := e.sandboxClient(id)
	_, err := sc.ReportMainProcessExit(t.Context(), &openshellv1.ReportMainProcessExitRequest{SandboxId: id})
	wantCode(t, err, codes.InvalidArgument)
	// A stale instance is ignored.
	if _, err := sc.ReportMainProcessExit(t.Context(), &openshellv1.ReportMainProcessExitRequest{SandboxId: id, InstanceId: "old", ExitCode: 9}); err != nil {
		t.Fatal(err)
	}
	if sb := e.get("alpha"); sb.GetStatus().GetPhase() != phaseReady || sb.GetStatus().ExitCode != nil {
		t.Fatalf("stale exit changed the sandbox: %v", sb.GetStatus())
	}
	if _, err := sc.ReportMainProcessExit(asInstance(t.Context(), "i1"), &openshellv1.ReportMainProcessExitRequest{SandboxId: id, InstanceId: "i1", ExitCode: 0}); err != nil {
		t.Fatal(err)
	}
	sb := e.waitPhase("alpha", phaseError)
	if sb.GetStatus().ExitCode == nil || sb.GetStatus().GetExitCode() != 0 || readyCondition(sb).GetReason() != drivers.ReasonMainProcessExited {
		t.Errorf("status after exit = %v", sb.GetStatus())
	}
}

// A command that could not start: the supervisor ships exec's reason, then reports
// exit 127; the Ready condition says why, and a restart clears it.
func TestMainProcessStartFailureReason(t *testing.T) {
	e := startEnv(t, t.TempDir(), drivertest.NewMemDriver())
	id := e.create("alpha").GetMetadata().GetId()
	e.connectSupervisor(id, "i1")
	e.waitPhase("alpha", phaseReady)
	ctx := asInstance(t.Context(), "i1")
	sc := e.sandboxClient(id)
	push, err := sc.PushSandboxLogs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := push.Send(&openshellv1.PushSandboxLogsRequest{SandboxId: id, Logs: []*openshellv1.SandboxLogLine{{
		SandboxId: id, TimestampMs: time.Now().UnixMilli(), Level: "ERROR", Target: "openshell-sandbox",
		Message: session.MainStartFailure + "exec /bin/bash: no such file or directory"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := push.CloseAndRecv(); err != nil {
		t.Fatal(err)
	}
	if _, err := sc.ReportMainProcessExit(ctx, &openshellv1.ReportMainProcessExitRequest{SandboxId: id, InstanceId: "i1", ExitCode: 127}); err != nil {
		t.Fatal(err)
	}
	sb := e.waitPhase("alpha", phaseError)
	const want = "the sandbox's main process exited with code 127: exec /bin/bash: no such file or directory"
	if c := readyCondition(sb); c.GetReason() != drivers.ReasonMainProcessExited || c.GetMessage() != want {
		t.Fatalf("condition = %v, want message %q", c, want)
	}
	if _, err := e.user.StartSandbox(t.Context(), &openshellv1.StartSandboxRequest{Name: "alpha"}); err != nil {
		t.Fatal(err)
	}
	if c := readyCondition(e.get("alpha")); strings.Contains(c.GetMessage(), "exec /bin/bash") {
		t.Errorf("the old exit's reason survived a start: %v", c)
	}
}

func TestDriverFailureKeepsRecord(t *testing.T) {
	drv := drivertest.NewMemDriver()
	e := startEnv(t, t.TempDir(), drv)
	drv.FailOn(drivertest.OpCreate, fmt.Errorf("no space left for sandbox: %w", drivers.ErrFailedPrecondition))
	_, err := e.user.CreateSandbox(t.Context(), &openshellv1.CreateSandboxRequest{Name: "alpha", Spec: &openshellv1.SandboxSpec{}})
	wantCode(t, err, codes.FailedPrecondition)
	sb := e.get("alpha")
	if sb.GetStatus().GetPhase() != phaseError || !strings.Contains(readyCondition(sb).GetMessage(), "no space left") {
		t.Fatalf("failed create left %v", sb.GetStatus())
	}
	// Stop on a sandbox the driver never created: a precondition error, and the
	// sandbox does not stay STOPPING.
	_, err = e.user.StopSandbox(t.Context(), &openshellv1.StopSandboxRequest{Name: "alpha"})
	wantCode(t, err, codes.FailedPrecondition)
	if p := e.get("alpha").GetStatus().GetPhase(); p != phaseError {
		t.Errorf("phase after a refused stop = %v, want ERROR", p)
	}
	if _, err := e.user.DeleteSandbox(t.Context(), &openshellv1.DeleteSandboxRequest{Name: "alpha"}); err != nil {
		t.Fatalf("deleting a failed sandbox: %v", err)
	}
}

// A create the driver refuses at validation leaves nothing stored: the list is the
// same before and after, the name is free, and the driver was never asked to create.
func TestRefusedCreateLeavesNoRecord(t *testing.T) {
	drv := drivertest.NewMemDriver()
	e := startEnv(t, t.TempDir(), drv)
	e.create("kept")
	list := func() []string {
		resp, err := e.user.ListSandboxes(t.Context(), &openshellv1.ListSandboxesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, sb := range resp.GetSandboxes() {
			names = append(names, sb.GetMetadata().GetName())
		}
		return names
	}
	before := list()
	drv.FailOn(drivertest.OpValidate, fmt.Errorf("memory 1 is below the 64Mi minimum: %w", drivers.ErrInvalidArgument))
	_, err := e.user.CreateSandbox(t.Context(), &openshellv1.CreateSandboxRequest{Name: "alpha", Spec: &openshellv1.SandboxSpec{}})
	wantCode(t, err, codes.InvalidArgument)
	if !strings.Contains(err.Error(), "64Mi minimum") {
		t.Errorf("refusal does not carry the driver's reason: %v", err)
	}
	if after := list(); strings.Join(after, ",") != strings.Join(before, ",") {
		t.Errorf("sandbox list changed by a refused create: before %v, after %v", before, after)
	}
	if _, err := e.user.GetSandbox(t.Context(), &openshellv1.GetSandboxRequest{Name: "alpha"}); status.Code(err) != codes.NotFound {
		t.Errorf("GetSandbox(alpha) after a refused create: %v, want NotFound", err)
	}
	// The name is free: once the driver accepts, the same create succeeds.
	drv.FailOn(drivertest.OpValidate, nil)
	e.create("alpha")
}

func TestBackendErrorPassesThrough(t *testing.T) {
	drv := drivertest.NewMemDriver()
	e := startEnv(t, t.TempDir(), drv)
	id := e.create("alpha").GetMetadata().GetId()
	e.connectSupervisor(id, "i1")
	e.waitPhase("alpha", phaseReady)
	drv.SetConditions(id, drivers.ReadyCondition(false, "OOMKilled", "out of memory"))
	sb := e.waitPhase("alpha", phaseError)
	if readyCondition(sb).GetReason() != "OOMKilled" {
		t.Errorf("driver condition not copied: %v", sb.GetStatus().GetConditions())
	}
}

func TestWatchSandbox(t *testing.T) {
	e := startEnv(t, t.TempDir(), drivertest.NewMemDriver())
	id := e.create("alpha").GetMetadata().GetId()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, err := e.user.WatchSandbox(ctx, &openshellv1.WatchSandboxRequest{Id: "nope"})
	if err == nil {
		ws, _ := e.user.WatchSandbox(ctx, &openshellv1.WatchSandboxRequest{Id: "nope"})
		_, err = ws.Recv()
	}
	wantCode(t, err, codes.NotFound)

	ws, err := e.user.WatchSandbox(ctx, &openshellv1.WatchSandboxRequest{Id: id, FollowStatus: true, StopOnTerminal: true})
	if err != nil {
		t.Fatal(err)
	}
	first, err := ws.Recv()
	if err != nil || first.GetSandbox().GetMetadata().GetId() != id {
		t.Fatalf("first frame = %v, %v", first, err)
	}
	e.connectSupervisor(id, "i1")
	var last *openshellv1.Sandbox
	for {
		ev, err := ws.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		last = ev.GetSandbox()
	}
	if last.GetStatus().GetPhase() != phaseReady {
		t.Fatalf("stream ended at %v, want READY", last.GetStatus().GetPhase())
	}
}

func TestLogs(t *testing.T) {
	e := startEnv(t, t.TempDir(), drivertest.NewMemDriver())
	id := e.create("alpha").GetMetadata().GetId()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	ws, err := e.user.WatchSandbox(ctx, &openshellv1.WatchSandboxRequest{Id: id, FollowLogs: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ws.Recv(); err != nil { // snapshot
		t.Fatal(err)
	}
	push, err := e.sandboxClient(id).PushSandboxLogs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		push.Send(&openshellv1.PushSandboxLogsRequest{SandboxId: id, Logs: []*openshellv1.SandboxLogLine{{Level: "INFO", Message: fmt.Sprint("line ", i)}}})
	}
	if _, err := push.CloseAndRecv(); err != nil {
		t.Fatal(err)
	}
	resp, err := e.user.GetSandboxLogs(ctx, &openshellv1.GetSandboxLogsRequest{SandboxId: id, Lines: 2, Sources: []string{"sandbox"}})
	if err != nil {
		t.Fatal(err)
	}
	// 3 sandbox lines plus the gateway's own "accepted" line.
	if len(resp.GetLogs()) != 2 || resp.GetLogs()[1].GetMessage() != "line 2" || resp.GetBufferTotal() != 4 || resp.GetLogs()[0].GetSource() != "sandbox" {
		t.Fatalf("logs = %v total %d", resp.GetLogs(), resp.GetBufferTotal())
	}
	gw, err := e.user.GetSandboxLogs(ctx, &openshellv1.GetSandboxLogsRequest{SandboxId: id, Sources: []string{"gateway"}})
	if err != nil || len(gw.GetLogs()) != 1 || !strings.Contains(gw.GetLogs()[0].GetMessage(), "accepted") {
		t.Fatalf("gateway lines = %v, %v", gw.GetLogs(), err)
	}
	for i := 0; i < 3; {
		ev, err := ws.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if ev.GetLog().GetSource() == "gateway" {
			continue
		}
		if got := ev.GetLog().GetMessage(); got != fmt.Sprint("line ", i) {
			t.Fatalf("followed log %d = %q", i, got)
		}
		i++
	}
}

// TestLogsInTimeOrder: a sandbox's lines arrive in batches, after the gateway's lines
// of the same moments; the listing puts every line at its time.
func TestLogsInTimeOrder(t *testing.T) {
	e := startEnv(t, t.TempDir(), drivertest.NewMemDriver())
	id := e.create("alpha").GetMetadata().GetId()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	before, err := e.user.GetSandboxLogs(ctx, &openshellv1.GetSandboxLogsRequest{SandboxId: id})
	if err != nil || len(before.GetLogs()) == 0 {
		t.Fatalf("the gateway's own lines: %v, %v", before.GetLogs(), err)
	}
	accepted := before.GetLogs()[0].GetTimestampMs()
	push, err := e.sandboxClient(id).PushSandboxLogs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Shipped late: one line from before the gateway's first, two of one moment after.
	push.Send(&openshellv1.PushSandboxLogsRequest{SandboxId: id, Logs: []*openshellv1.SandboxLogLine{
		{Level: "INFO", Message: "late a", TimestampMs: accepted + 5},
		{Level: "INFO", Message: "late b", TimestampMs: accepted + 5},
		{Level: "INFO", Message: "early", TimestampMs: accepted - 20},
	}})
	if _, err := push.CloseAndRecv(); err != nil {
		t.Fatal(err)
	}
	resp, err := e.user.GetSandboxLogs(ctx, &openshellv1.GetSandboxLogsRequest{SandboxId: id})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range resp.GetLogs() {
		if l.GetSource() == "sandbox" {
			got = append(got, l.GetMessage())
		} else if l.GetTimestampMs() == accepted && len(got) == 1 {
			got = append(got, "gateway's first")
		}
	}
	if want := []string{"early", "gateway's first", "late a", "late b"}; !slices.Equal(got, want) {
		t.Fatalf("listing order %q, want %q (all: %v)", got, want, resp.GetLogs())
	}
}

func TestForwardTcpAndSSHSessions(t *testing.T) {
	e := startEnv(t, t.TempDir(), drivertest.NewMemDriver())
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	id := e.create("alpha").GetMetadata().GetId()

	roundTrip := func(init *openshellv1.TcpForwardInit) error {
		fs, err := e.user.ForwardTcp(ctx)
		if err != nil {
			return err
		}
		if err := fs.Send(&openshellv1.TcpForwardFrame{Payload: &openshellv1.TcpForwardFrame_Init{Init: init}}); err != nil {
			return err
		}
		msg := bytes.Repeat([]byte("openshell "), 5000) // 50 KB: several relay chunks
		go func() {
			fs.Send(&openshellv1.TcpForwardFrame{Payload: &openshellv1.TcpForwardFrame_Data{Data: msg}})
		}()
		var got []byte
		for len(got) < len(msg) {
			f, err := fs.Recv()
			if err != nil {
				return err
			}
			got = append(got, f.GetData()...)
		}
		fs.CloseSend()
		if !bytes.Equal(got, msg) {
			return fmt.Errorf("echo mismatch: %d bytes", len(got))
		}
		return nil
	}
	tcp := &openshellv1.TcpForwardInit{SandboxId: id, Target: &openshellv1.TcpForwardInit_Tcp{Tcp: &openshellv1.TcpRelayTarget{Host: "127.0.0.1", Port: 8080}}}

	// Not READY yet → FAILED_PRECONDITION.
	wantCode(t, roundTrip(tcp), codes.FailedPrecondition)
	e.connectSupervisor(id, "i1")
	e.waitPhase("alpha", phaseReady)
	if err := roundTrip(tcp); err != nil {
		t.Fatalf("tcp forward: %v", err)
	}
	wantCode(t, roundTrip(&openshellv1.TcpForwardInit{SandboxId: id, Target: &openshellv1.TcpForwardInit_Tcp{
		Tcp: &openshellv1.TcpRelayTarget{Host: "10.0.0.1", Port: 80}}}), codes.InvalidArgument)

	sshInit := func(tok string) *openshellv1.TcpForwardInit {
		return &openshellv1.TcpForwardInit{SandboxId: id, AuthorizationToken: tok, Target: &openshellv1.TcpForwardInit_Ssh{Ssh: &openshellv1.SshRelayTarget{}}}
	}
	err := roundTrip(sshInit("bogus"))
	wantCode(t, err, codes.Unauthenticated)
	if !strings.Contains(err.Error(), "unknown or revoked") {
		t.Errorf("unclear message: %v", err)
	}
	sess, err := e.user.CreateSshSession(ctx, &openshellv1.CreateSshSessionRequest{SandboxId: id})
	if err != nil {
		t.Fatal(err)
	}
	if sess.GetGatewayScheme() != "https" || sess.GetGatewayPort() == 0 || sess.GetExpiresAtMs() <= time.Now().UnixMilli() || strings.ContainsAny(sess.GetToken(), "+/= ") {
		t.Errorf("session = %v", sess)
	}
	if err := roundTrip(sshInit(sess.GetToken())); err != nil {
		t.Fatalf("ssh forward with a session token: %v", err)
	}
	rv, err := e.user.RevokeSshSession(ctx, &openshellv1.RevokeSshSessionRequest{Token: sess.GetToken()})
	if err != nil || !rv.GetRevoked() {
		t.Fatalf("revoke = %v, %v", rv, err)
	}
	wantCode(t, roundTrip(sshInit(sess.GetToken())), codes.Unauthenticated)
}
