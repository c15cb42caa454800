package gateway_test

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/internal/instancemd"
	"github.com/openshell/openshell/internal/testkeys"
	"github.com/openshell/openshell/supervisor/session"
)

// boundSupervisor is the real supervisor session client and SSH server (in-process
// on the relay stream), with a known identity.
type boundSupervisor struct {
	id      session.Identity
	hostKey ssh.PublicKey // what its SSH server presents
	stop    func()
}

// startBound runs a real supervisor for sandbox id. register, when set, is the host
// key the session registers instead of its SSH server's own (a supervisor whose key
// "changed" under the gateway).
func (e *env) startBound(id string, secret string, register ssh.PublicKey) *boundSupervisor {
	e.t.Helper()
	dir, r, srv, cc := e.supervisorParts(id)
	if register == nil {
		register = srv.HostKey()
	}
	b := &boundSupervisor{id: session.Identity{InstanceID: session.NewInstanceID(), Secret: secret}, hostKey: srv.HostKey()}
	cl, err := session.New(cc, session.Config{SandboxID: id, InstanceID: b.id.InstanceID, InstanceSecret: secret,
		HostKey: register, ServeSSH: srv.ServeConn, BackoffMin: 50 * time.Millisecond, BackoffMax: 200 * time.Millisecond})
	if err != nil {
		e.t.Fatal(err)
	}
	b.id = cl.Identity()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = cl.Run(ctx); close(done) }()
	stopped := false
	b.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		<-done
		cc.Close()
		r.Close()
		os.RemoveAll(dir)
	}
	e.t.Cleanup(b.stop)
	return b
}

// hello opens ConnectSupervisor with the sandbox's valid token, as instance with
// secret (and host key, when set), and returns the gateway's first answer.
func (e *env) hello(ctx context.Context, id, instance, secret string, key ssh.PublicKey) (*openshellv1.GatewayMessage, error) {
	kv := []string{instancemd.InstanceID, instance}
	if secret != "" {
		kv = append(kv, instancemd.InstanceSecret, secret)
	}
	if key != nil {
		kv = append(kv, instancemd.HostKey, base64.StdEncoding.EncodeToString(key.Marshal()))
	}
	stream, err := e.sandboxClient(id).ConnectSupervisor(metadata.AppendToOutgoingContext(ctx, kv...))
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&openshellv1.SupervisorMessage{Payload: &openshellv1.SupervisorMessage_Hello{
		Hello: &openshellv1.SupervisorHello{SandboxId: id, InstanceId: instance}}}); err != nil {
		return nil, err
	}
	return stream.Recv()
}

// execOut runs argv through ExecSandbox and returns stdout and the exit code.
func (e *env) execOut(ctx context.Context, id string, argv ...string) (string, int32, error) {
	out, _, code, err := e.exec(ctx, &openshellv1.ExecSandboxRequest{SandboxId: id, Command: argv})
	return out, code, err
}

func (e *env) gatewayLines(ctx context.Context, id string) string {
	e.t.Helper()
	resp, err := e.user.GetSandboxLogs(ctx, &openshellv1.GetSandboxLogsRequest{SandboxId: id, Sources: []string{"gateway"}})
	if err != nil {
		e.t.Fatal(err)
	}
	var b strings.Builder
	for _, l := range resp.GetLogs() {
		b.WriteString(l.GetSource() + ": " + l.GetMessage() + "\n")
	}
	return b.String()
}

// TestSessionBoundToInstance attacks a live session with the sandbox's own valid
// token over real gRPC and TLS: a second ConnectSupervisor with the bound instance id
// but the wrong (or no) instance secret, or with another instance id, is refused with
// PERMISSION_DENIED and logged to the sandbox's gateway log, and the real supervisor
// keeps its session (exec still reaches it). Forged exit reports and log pushes are
// refused too. Once the bound supervisor is gone, a new instance binds.
func TestSessionBoundToInstance(t *testing.T) {
	e := startEnv(t, t.TempDir(), drivertest.NewMemDriver())
	id := e.create("alpha").GetMetadata().GetId()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	// Before any supervisor bound the sandbox, a token holder without a secret cannot
	// claim it (a binding to an empty secret would protect nothing).
	if m, err := e.hello(ctx, id, "early", "", testkeys.SSHPublicKey(t)); status.Code(err) != codes.PermissionDenied || err == nil || !strings.Contains(err.Error(), "presents no instance secret") {
		t.Fatalf("secretless hello on an unbound sandbox = %v, %v; want PermissionDenied naming the missing secret", m, err)
	}
	real := e.startBound(id, session.NewInstanceSecret(), nil)
	e.waitPhase("alpha", phaseReady)

	attacks := []struct {
		name, instance, secret string
		want                   string
	}{
		{"bound instance, wrong secret", real.id.InstanceID, session.NewInstanceSecret(), "wrong instance secret"},
		{"bound instance, no secret", real.id.InstanceID, "", "presents no instance secret"},
		{"another instance", session.NewInstanceID(), session.NewInstanceSecret(), "holds the sandbox's live session"},
		{"another instance, no secret", "attacker", "", "presents no instance secret"},
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			m, err := e.hello(ctx, id, a.instance, a.secret, testkeys.SSHPublicKey(t))
			if err == nil {
				t.Fatalf("hello accepted: %v", m)
			}
			if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), a.want) {
				t.Fatalf("hello refused with %v, want PermissionDenied mentioning %q", err, a.want)
			}
		})
	}
	if lines := e.gatewayLines(ctx, id); strings.Count(lines, "supervisor session refused") != len(attacks)+1 {
		t.Errorf("gateway log has %d refusal lines, want %d (the attacks and the early secretless hello):\n%s", strings.Count(lines, "supervisor session refused"), len(attacks)+1, lines)
	}
	// The real supervisor still holds the session: the sandbox is READY and exec
	// reaches its SSH server.
	if p := e.get("alpha").GetStatus().GetPhase(); p != phaseReady {
		t.Fatalf("phase after the attacks = %v, want READY", p)
	}
	if out, code, err := e.execOut(ctx, id, "echo", "still mine"); err != nil || code != 0 || out != "still mine\n" {
		t.Fatalf("exec after the attacks = %q %d %v", out, code, err)
	}

	// A forged exit report for the live instance, without its secret.
	forger := e.sandboxClient(id)
	fctx := session.Identity{InstanceID: real.id.InstanceID, Secret: session.NewInstanceSecret()}.Outgoing(ctx)
	_, err := forger.ReportMainProcessExit(fctx, &openshellv1.ReportMainProcessExitRequest{SandboxId: id, InstanceId: real.id.InstanceID, ExitCode: 1})
	wantCode(t, err, codes.PermissionDenied)
	if ec := e.get("alpha").GetStatus().ExitCode; ec != nil {
		t.Fatalf("a forged exit report set exit code %d", *ec)
	}
	// Log pushes from another instance while the bound one is live.
	push := func(ctx context.Context, line *openshellv1.SandboxLogLine) error {
		st, err := forger.PushSandboxLogs(ctx)
		if err != nil {
			return err
		}
		_ = st.Send(&openshellv1.PushSandboxLogsRequest{SandboxId: id, Logs: []*openshellv1.SandboxLogLine{line}})
		_, err = st.CloseAndRecv()
		return err
	}
	err = push(session.Identity{InstanceID: "attacker", Secret: "x"}.Outgoing(ctx), &openshellv1.SandboxLogLine{Level: "INFO", Message: "from another instance"})
	wantCode(t, err, codes.PermissionDenied)
	// The bound instance's own pushes pass.
	if err := push(real.id.Outgoing(ctx), &openshellv1.SandboxLogLine{Level: "INFO", Message: "own line"}); err != nil {
		t.Fatalf("the bound instance's own log push: %v", err)
	}

	// The bound supervisor goes away (the sandbox restarts): a new instance binds.
	real.stop()
	e.waitPhase("alpha", phaseProvisioning)
	next := e.startBound(id, "", nil)
	e.waitPhase("alpha", phaseReady)
	if out, code, err := e.execOut(ctx, id, "echo", "new boot"); err != nil || code != 0 || out != "new boot\n" {
		t.Fatalf("exec on the new instance = %q %d %v", out, code, err)
	}
	// And the old instance, back with its own secret, is refused while the new one
	// holds the session.
	_, err = e.hello(ctx, id, real.id.InstanceID, real.id.Secret, real.hostKey)
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("the old instance's hello while the new one is live: %v, want PermissionDenied", err)
	}
	next.stop()
}

// TestSessionReconnectSameInstance: the bound instance reconnecting with its secret
// supersedes its own older stream; with the same secret but another host key it is
// refused.
func TestSessionReconnectSameInstance(t *testing.T) {
	e := startEnv(t, t.TempDir(), drivertest.NewMemDriver())
	id := e.create("alpha").GetMetadata().GetId()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	secret, key := session.NewInstanceSecret(), testkeys.SSHPublicKey(t)
	m, err := e.hello(ctx, id, "i1", secret, key)
	if err != nil || m.GetSessionAccepted() == nil {
		t.Fatalf("first hello: %v %v", m, err)
	}
	e.waitPhase("alpha", phaseReady)
	if _, err := e.hello(ctx, id, "i1", secret, testkeys.SSHPublicKey(t)); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "another SSH host key") {
		t.Fatalf("reconnect with another host key: %v, want PermissionDenied", err)
	}
	m, err = e.hello(ctx, id, "i1", secret, key)
	if err != nil || m.GetSessionAccepted() == nil {
		t.Fatalf("reconnect with the same secret and key: %v %v", m, err)
	}
	e.waitPhase("alpha", phaseReady)
}

// TestExecRefusesChangedHostKey: a supervisor whose SSH server presents a host key
// other than the one its session registered gets no exec and no SSH forward: the
// gateway's SSH client fails with an error naming both fingerprints, and no command
// runs.
func TestExecRefusesChangedHostKey(t *testing.T) {
	e := startEnv(t, t.TempDir(), drivertest.NewMemDriver())
	id := e.create("alpha").GetMetadata().GetId()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	registered := testkeys.SSHPublicKey(t)
	sup := e.startBound(id, "", registered)
	e.waitPhase("alpha", phaseReady)
	marker := filepath.Join(t.TempDir(), "ran")
	_, _, err := e.execOut(ctx, id, "touch", marker)
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("exec against a changed host key: %v, want PermissionDenied", err)
	}
	for _, want := range []string{"does not match", ssh.FingerprintSHA256(registered), ssh.FingerprintSHA256(sup.hostKey)} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the command ran although the host key did not match")
	}
	// CreateSshSession reports the registered key's fingerprint for clients that
	// speak SSH themselves through ForwardTcp.
	resp, err := e.user.CreateSshSession(ctx, &openshellv1.CreateSshSessionRequest{SandboxId: id})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetHostKeyFingerprint() != ssh.FingerprintSHA256(registered) {
		t.Fatalf("host_key_fingerprint = %q, want %q", resp.GetHostKeyFingerprint(), ssh.FingerprintSHA256(registered))
	}
}

// TestForgedLogSourceRefused: a sandbox pushing a line that claims the gateway's
// source (or any source but its own) is refused, and nothing it sent shows among the
// gateway's lines; a line without a source is stored as the sandbox's.
func TestForgedLogSourceRefused(t *testing.T) {
	e := startEnv(t, t.TempDir(), drivertest.NewMemDriver())
	id := e.create("alpha").GetMetadata().GetId()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c := e.sandboxClient(id)
	push := func(lines ...*openshellv1.SandboxLogLine) error {
		st, err := c.PushSandboxLogs(ctx)
		if err != nil {
			return err
		}
		_ = st.Send(&openshellv1.PushSandboxLogsRequest{SandboxId: id, Logs: lines})
		_, err = st.CloseAndRecv()
		return err
	}
	for _, src := range []string{"gateway", "Gateway", " gateway", "driver"} {
		err := push(&openshellv1.SandboxLogLine{Level: "INFO", Message: "innocent"},
			&openshellv1.SandboxLogLine{Level: "WARN", Target: "gateway", Source: src, Message: "forged: sandbox deleted by admin"})
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "source") {
			t.Errorf("push with source %q: %v, want PermissionDenied naming the source", src, err)
		}
	}
	if err := push(&openshellv1.SandboxLogLine{Level: "INFO", Message: "plain"}); err != nil {
		t.Fatal(err)
	}
	resp, err := e.user.GetSandboxLogs(ctx, &openshellv1.GetSandboxLogsRequest{SandboxId: id})
	if err != nil {
		t.Fatal(err)
	}
	plain := 0
	for _, l := range resp.GetLogs() {
		if strings.Contains(l.GetMessage(), "forged") || l.GetMessage() == "innocent" {
			t.Errorf("a line of a refused push was stored: %v", l)
		}
		if l.GetMessage() == "plain" {
			plain++
			if l.GetSource() != "sandbox" {
				t.Errorf("a line without a source is stored as %q, want sandbox", l.GetSource())
			}
		}
		if l.GetSource() == "gateway" && l.GetMessage() != "" && !strings.HasPrefix(l.GetTarget(), "gateway") {
			t.Errorf("gateway line with an unexpected target: %v", l)
		}
	}
	if plain != 1 {
		t.Fatalf("%d plain lines stored, want 1: %v", plain, resp.GetLogs())
	}
}

// TestRelayStreamOnlyFromBoundInstance: a RelayStream naming a pending channel is
// refused unless it comes from the instance the relay was asked of, with its secret;
// the bound instance then claims it and bytes flow.
func TestRelayStreamOnlyFromBoundInstance(t *testing.T) {
	e := startEnv(t, t.TempDir(), drivertest.NewMemDriver())
	id := e.create("alpha").GetMetadata().GetId()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	bound := session.Identity{InstanceID: "i1", Secret: session.NewInstanceSecret()}
	c := e.sandboxClient(id)
	stream, err := c.ConnectSupervisor(metadata.AppendToOutgoingContext(bound.Outgoing(ctx), instancemd.HostKey,
		base64.StdEncoding.EncodeToString(testkeys.SSHPublicKey(t).Marshal())))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&openshellv1.SupervisorMessage{Payload: &openshellv1.SupervisorMessage_Hello{
		Hello: &openshellv1.SupervisorHello{SandboxId: id, InstanceId: bound.InstanceID}}}); err != nil {
		t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || m.GetSessionAccepted() == nil {
		t.Fatalf("hello: %v %v", m, err)
	}
	e.waitPhase("alpha", phaseReady)

	fs, err := e.user.ForwardTcp(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := fs.Send(&openshellv1.TcpForwardFrame{Payload: &openshellv1.TcpForwardFrame_Init{Init: &openshellv1.TcpForwardInit{
		SandboxId: id, Target: &openshellv1.TcpForwardInit_Tcp{Tcp: &openshellv1.TcpRelayTarget{Host: "127.0.0.1", Port: 8080}}}}}); err != nil {
		t.Fatal(err)
	}
	var channel string
	for channel == "" {
		m, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		channel = m.GetRelayOpen().GetChannelId()
	}
	claim := func(ctx context.Context) (openshellv1.OpenShell_RelayStreamClient, error) {
		rs, err := c.RelayStream(ctx)
		if err != nil {
			return nil, err
		}
		if err := rs.Send(&openshellv1.RelayFrame{Payload: &openshellv1.RelayFrame_Init{Init: &openshellv1.RelayInit{ChannelId: channel}}}); err != nil {
			return nil, err
		}
		return rs, nil
	}
	for _, forged := range []session.Identity{
		{InstanceID: bound.InstanceID, Secret: session.NewInstanceSecret()},
		{InstanceID: "attacker", Secret: bound.Secret},
		{InstanceID: bound.InstanceID},
	} {
		rs, err := claim(forged.Outgoing(ctx))
		if err == nil {
			_, err = rs.Recv()
		}
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("RelayStream claimed by %+v: %v, want PermissionDenied", forged, err)
		}
	}
	// The bound instance claims the channel: data reaches the forward's client.
	rs, err := claim(bound.Outgoing(ctx))
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.Send(&openshellv1.RelayFrame{Payload: &openshellv1.RelayFrame_Data{Data: []byte("from the bound supervisor")}}); err != nil {
		t.Fatal(err)
	}
	f, err := fs.Recv()
	if err != nil || string(f.GetData()) != "from the bound supervisor" {
		t.Fatalf("forward got %q, %v", f.GetData(), err)
	}
}
