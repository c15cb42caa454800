package gateway_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/supervisor/reaper"
	"github.com/openshell/openshell/supervisor/sandboxuser"
	"github.com/openshell/openshell/supervisor/session"
	"github.com/openshell/openshell/supervisor/sshd"
)

// realSupervisor runs the supervisor's real session client and SSH server (as the
// current user, on a Unix socket) for sandbox id, connected to the gateway with the
// sandbox's own token.
func (e *env) realSupervisor(id string) {
	e.t.Helper()
	dir, r, srv, cc := e.supervisorParts(id)
	sock := filepath.Join(dir, "ssh.sock")
	ln, err := sshd.ListenUnix(sock)
	if err != nil {
		e.t.Fatal(err)
	}
	cl, err := session.New(cc, session.Config{SandboxID: id, InstanceID: session.NewInstanceID(), HostKey: srv.HostKey(),
		DialSSH: func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { _ = srv.Serve(ctx, ln); done <- struct{}{} }()
	go func() { _ = cl.Run(ctx); done <- struct{}{} }()
	e.t.Cleanup(func() {
		cancel()
		<-done
		<-done
		cc.Close()
		r.Close()
	})
}

// supervisorParts makes what a real supervisor for sandbox id runs on: a working
// directory (removed at cleanup), a reaper, the SSH server as the current user, and
// a session connection to the gateway with the sandbox's own token. The caller
// closes r and cc.
func (e *env) supervisorParts(id string) (dir string, r *reaper.Reaper, srv *sshd.Server, cc *grpc.ClientConn) {
	e.t.Helper()
	dir, err := os.MkdirTemp("", "sup")
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { os.RemoveAll(dir) })
	r = reaper.New(false)
	u := &sandboxuser.User{Name: "me", UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Home: dir, Shell: "/bin/sh"}
	srv, err = sshd.New(sshd.Config{User: u, Env: append([]string{"PATH=/usr/bin:/bin"}, u.Env()...), Dir: dir, Reaper: r})
	if err != nil {
		e.t.Fatal(err)
	}
	tok, err := e.issuer.Mint(id, time.Hour)
	if err != nil {
		e.t.Fatal(err)
	}
	cc, err = session.Dial(session.DialOptions{Endpoint: "https://" + e.addr, CAPEM: e.bundle.CAPEM,
		Token: func() (string, error) { return tok, nil }})
	if err != nil {
		e.t.Fatal(err)
	}
	return dir, r, srv, cc
}

// exec runs req through ExecSandbox and returns stdout, stderr and the exit code (-1
// when the stream ended without one); on an error, what arrived before it.
func (e *env) exec(ctx context.Context, req *openshellv1.ExecSandboxRequest) (string, string, int32, error) {
	st, err := e.user.ExecSandbox(ctx, req)
	if err != nil {
		return "", "", 0, err
	}
	var out, errOut strings.Builder
	code := int32(-1)
	for {
		ev, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return out.String(), errOut.String(), code, nil
		}
		if err != nil {
			return out.String(), errOut.String(), code, err
		}
		out.Write(ev.GetStdout().GetData())
		errOut.Write(ev.GetStderr().GetData())
		if x := ev.GetExit(); x != nil {
			code = x.GetExitCode()
		}
	}
}

// TestExecThroughRealSupervisor runs ExecSandbox and ExecSandboxInteractive through
// the gateway, the relay, the real supervisor session client and its SSH server.
func TestExecThroughRealSupervisor(t *testing.T) {
	e := startEnv(t, t.TempDir(), drivertest.NewMemDriver())
	id := e.create("alpha").GetMetadata().GetId()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	// Not READY yet: FAILED_PRECONDITION.
	st, err := e.user.ExecSandbox(ctx, &openshellv1.ExecSandboxRequest{SandboxId: id, Command: []string{"true"}})
	if err == nil {
		_, err = st.Recv()
	}
	wantCode(t, err, codes.FailedPrecondition)

	e.realSupervisor(id)
	e.waitPhase("alpha", phaseReady)

	out, errOut, code, err := e.exec(ctx, &openshellv1.ExecSandboxRequest{SandboxId: id, Command: []string{"sh", "-c", "echo hi $GREETING; echo oops >&2; exit 3"},
		Environment: map[string]string{"GREETING": "there"}})
	if err != nil || out != "hi there\n" || errOut != "oops\n" || code != 3 {
		t.Fatalf("exec = %q %q %d %v", out, errOut, code, err)
	}
	_, _, _, err = e.exec(ctx, &openshellv1.ExecSandboxRequest{SandboxId: id, Command: []string{"true"}, Environment: map[string]string{"1BAD": "x"}})
	wantCode(t, err, codes.InvalidArgument)

	is, err := e.user.ExecSandboxInteractive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	is.Send(&openshellv1.ExecSandboxInput{Payload: &openshellv1.ExecSandboxInput_Start{Start: &openshellv1.ExecSandboxRequest{SandboxId: id, Command: []string{"cat"}}}})
	is.Send(&openshellv1.ExecSandboxInput{Payload: &openshellv1.ExecSandboxInput_Stdin{Stdin: []byte("ping\n")}})
	is.CloseSend()
	var got strings.Builder
	var exit *openshellv1.ExecSandboxExit
	for {
		ev, err := is.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got.Write(ev.GetStdout().GetData())
		if ev.GetExit() != nil {
			exit = ev.GetExit()
		}
	}
	if got.String() != "ping\n" || exit == nil || exit.GetExitCode() != 0 {
		t.Fatalf("interactive cat = %q exit %v", got.String(), exit)
	}
}
