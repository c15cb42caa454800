package supervisor

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/gateway/hub"
	"github.com/openshell/openshell/gateway/sshrelay"
	"github.com/openshell/openshell/internal/testenv"
	"github.com/openshell/openshell/supervisor/bootstrap"
	"github.com/openshell/openshell/supervisor/policy"
	"github.com/openshell/openshell/supervisor/sandboxuser"
)

// gw is a small real gateway: sessions, relays, exit reports and logs.
type gw struct {
	pb.UnimplementedOpenShellServer
	mu       sync.Mutex
	sessions chan grpc.BidiStreamingServer[pb.SupervisorMessage, pb.GatewayMessage]
	relays   chan *relayConn
	exits    []*pb.ReportMainProcessExitRequest
	logs     []*pb.SandboxLogLine
	hellos   []*pb.SupervisorHello
	hostKey  ssh.PublicKey // registered by the last hello
}

func newGW() *gw {
	return &gw{sessions: make(chan grpc.BidiStreamingServer[pb.SupervisorMessage, pb.GatewayMessage], 4), relays: make(chan *relayConn, 4)}
}

func (g *gw) ConnectSupervisor(s grpc.BidiStreamingServer[pb.SupervisorMessage, pb.GatewayMessage]) error {
	m, err := s.Recv()
	if err != nil || m.GetHello() == nil {
		return status.Error(codes.InvalidArgument, "hello first")
	}
	inst, err := hub.InstanceFromContext(s.Context(), m.GetHello().GetInstanceId())
	if err != nil {
		return err
	}
	g.mu.Lock()
	g.hellos = append(g.hellos, m.GetHello())
	g.hostKey = inst.HostKey
	g.mu.Unlock()
	if err := s.Send(&pb.GatewayMessage{Payload: &pb.GatewayMessage_SessionAccepted{SessionAccepted: &pb.SessionAccepted{SessionId: "s", HeartbeatIntervalSecs: 15}}}); err != nil {
		return err
	}
	g.sessions <- s
	for {
		if _, err := s.Recv(); err != nil {
			return nil
		}
	}
}

// relayConn is the gateway end of a RelayStream as an io.ReadWriteCloser.
type relayConn struct {
	s    grpc.BidiStreamingServer[pb.RelayFrame, pb.RelayFrame]
	buf  []byte
	done chan struct{}
	once sync.Once
	key  ssh.PublicKey
}

// HostKey is the key the supervisor registered: the SSH client accepts only it.
func (r *relayConn) HostKey() ssh.PublicKey { return r.key }

func (r *relayConn) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		f, err := r.s.Recv()
		if err != nil {
			return 0, io.EOF
		}
		r.buf = f.GetData()
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

func (r *relayConn) Write(p []byte) (int, error) {
	if err := r.s.Send(&pb.RelayFrame{Payload: &pb.RelayFrame_Data{Data: append([]byte(nil), p...)}}); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (r *relayConn) Close() error { r.once.Do(func() { close(r.done) }); return nil }

func (g *gw) RelayStream(s grpc.BidiStreamingServer[pb.RelayFrame, pb.RelayFrame]) error {
	if _, err := s.Recv(); err != nil {
		return err
	}
	g.mu.Lock()
	key := g.hostKey
	g.mu.Unlock()
	rc := &relayConn{s: s, done: make(chan struct{}), key: key}
	g.relays <- rc
	select {
	case <-rc.done:
	case <-s.Context().Done():
	}
	return nil
}

func (g *gw) ReportMainProcessExit(_ context.Context, r *pb.ReportMainProcessExitRequest) (*pb.ReportMainProcessExitResponse, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.exits = append(g.exits, r)
	return &pb.ReportMainProcessExitResponse{}, nil
}

func (g *gw) PushSandboxLogs(s grpc.ClientStreamingServer[pb.PushSandboxLogsRequest, pb.PushSandboxLogsResponse]) error {
	for {
		r, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return s.SendAndClose(&pb.PushSandboxLogsResponse{})
		}
		if err != nil {
			return err
		}
		g.mu.Lock()
		g.logs = append(g.logs, r.GetLogs()...)
		g.mu.Unlock()
	}
}

// serveGW serves g (a gw, or a gw with some calls replaced) on addr.
func serveGW(t *testing.T, g pb.OpenShellServer, addr string) (string, func()) {
	t.Helper()
	var ln net.Listener
	var err error
	for i := 0; i < 50; i++ {
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	pb.RegisterOpenShellServer(s, g)
	go s.Serve(ln)
	var once sync.Once
	stop := func() { once.Do(s.Stop) }
	t.Cleanup(stop)
	return ln.Addr().String(), stop
}

func execOverRelay(t *testing.T, g *gw, s grpc.BidiStreamingServer[pb.SupervisorMessage, pb.GatewayMessage], argv ...string) (string, int32) {
	t.Helper()
	// The relay is opened on the session as the gateway's hub opens it: the exec
	// target, answered by the supervisor's exec relay.
	open := func(_ context.Context, target *pb.RelayOpen) (io.ReadWriteCloser, error) {
		target.ChannelId = "c-" + strconv.Itoa(int(time.Now().UnixNano()))
		if err := s.Send(&pb.GatewayMessage{Payload: &pb.GatewayMessage_RelayOpen{RelayOpen: target}}); err != nil {
			return nil, err
		}
		select {
		case rc := <-g.relays:
			t.Cleanup(func() { rc.Close() })
			return rc, nil
		case <-time.After(10 * time.Second):
			t.Fatal("supervisor did not open a RelayStream")
			return nil, nil
		}
	}
	var out strings.Builder
	var code int32 = -1
	err := sshrelay.Exec(t.Context(), open, &pb.ExecSandboxRequest{Command: argv}, func(ev *pb.ExecSandboxEvent) error {
		out.Write(ev.GetStdout().GetData())
		out.Write(ev.GetStderr().GetData())
		if e := ev.GetExit(); e != nil {
			code = e.GetExitCode()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.String(), code
}

// agentReachableDir makes a temporary directory, removed with the test, that the
// sandbox user can traverse. Not t.TempDir: its parent is 0700.
func agentReachableDir(t *testing.T, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.RemoveAll(dir)
		// Whatever the test started has ended by now (Run returns only when its
		// work has): nothing may write into the directory afterwards.
		time.Sleep(200 * time.Millisecond)
		if _, err := os.Stat(dir); err == nil {
			t.Errorf("%s was written to after the test ended (a goroutine outlived Run)", dir)
			os.RemoveAll(dir)
		}
	})
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// rootOnlyRoot makes base/root, a sandbox root whose account files know only root.
func rootOnlyRoot(t *testing.T, base string) string {
	t.Helper()
	root := filepath.Join(base, "root")
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestSupervisorEndToEnd(t *testing.T) {
	base := agentReachableDir(t, "supervisor-test-")
	root := rootOnlyRoot(t, base)

	g := newGW()
	addr, stop := serveGW(t, g, "127.0.0.1:0")
	cfg := &bootstrap.Config{
		Endpoint: "http://" + addr, SandboxID: "sb-1", SandboxName: "box", Token: "tok",
		Main: bootstrap.MainProcessSpec{Version: 1, Command: []string{"/bin/sh", "-c", "echo main-started $FOO; read x </dev/null; sleep 2; exit 4"},
			Env: map[string]string{"FOO": "bar"}},
	}
	t.Setenv(bootstrap.EnvToken, "must-not-leak")
	// A line logged before the run (a VM guest's clock step) is shipped with its own
	// time; one below Info is not.
	earlyAt := time.Now().Add(-3 * time.Second).Truncate(time.Millisecond)
	early := slog.NewRecord(earlyAt, slog.LevelInfo, "clock set to the host's", 0)
	early.AddAttrs(slog.String("was_behind", "314ms"))
	quiet := slog.NewRecord(earlyAt, slog.LevelDebug, "early debug line", 0)
	runInBackground(t, cfg, Options{RunDir: filepath.Join(base, "run"), Root: root, SandboxDir: filepath.Join(base, "sandbox"),
		Early: []slog.Record{early, quiet}})

	var s grpc.BidiStreamingServer[pb.SupervisorMessage, pb.GatewayMessage]
	select {
	case s = <-g.sessions:
	case <-time.After(10 * time.Second):
		t.Fatal("no session")
	}
	out, code := execOverRelay(t, g, s, "sh", "-c", `id -u; pwd; echo "FOO=$FOO TOKEN=$OPENSHELL_SANDBOX_TOKEN"`)
	if code != 0 {
		t.Fatalf("exec exit %d: %s", code, out)
	}
	wantUID := strconv.Itoa(os.Getuid())
	if os.Geteuid() == 0 {
		u, err := sandboxuser.DB{Root: root}.Resolve(sandboxuser.DefaultName)
		if err != nil {
			t.Fatalf("sandbox user not created: %v", err)
		}
		wantUID = strconv.Itoa(int(u.UID))
		if u.UID == 0 {
			t.Fatal("sandbox user is root")
		}
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || lines[0] != wantUID || lines[1] != filepath.Join(base, "sandbox") || lines[2] != "FOO=bar TOKEN=" {
		t.Fatalf("exec output %q (want uid %s)", out, wantUID)
	}

	// Main process exit is reported once, with its code.
	deadline := time.Now().Add(15 * time.Second)
	for {
		g.mu.Lock()
		n := len(g.exits)
		g.mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("main process exit not reported")
		}
		time.Sleep(50 * time.Millisecond)
	}
	g.mu.Lock()
	if g.exits[0].GetExitCode() != 4 || g.exits[0].GetSandboxId() != "sb-1" || g.exits[0].GetInstanceId() != g.hellos[0].GetInstanceId() {
		t.Fatalf("exit report %v (hello %v)", g.exits[0], g.hellos[0])
	}
	g.mu.Unlock()

	// Logs: the main process's output line was shipped with source=sandbox, and the
	// early line with its time, its attribute and the sandbox's id.
	for {
		g.mu.Lock()
		found, foundEarly := false, false
		for _, l := range g.logs {
			if l.GetMessage() == "main-started bar" && l.GetSource() == "sandbox" && l.GetFields()["stream"] == "stdout" {
				found = true
			}
			if l.GetMessage() == "clock set to the host's" {
				if l.GetTimestampMs() != earlyAt.UnixMilli() || l.GetFields()["was_behind"] != "314ms" || l.GetFields()["sandbox_id"] != "sb-1" || l.GetLevel() != "INFO" {
					t.Errorf("early line shipped as %v (logged at %d ms)", l, earlyAt.UnixMilli())
				}
				foundEarly = true
			}
			if l.GetMessage() == "early debug line" {
				t.Errorf("an early line below Info was shipped: %v", l)
			}
		}
		g.mu.Unlock()
		if found && foundEarly {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not shipped: main process output (%v), early line (%v)", found, foundEarly)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Gateway restart: the supervisor reconnects with the same instance id and
	// serves exec again; the main process is neither restarted nor re-reported.
	stop()
	g2 := newGW()
	serveGW(t, g2, addr)
	select {
	case s = <-g2.sessions:
	case <-time.After(10 * time.Second):
		t.Fatal("no session after gateway restart")
	}
	if g2.hellos[0].GetInstanceId() != g.hellos[0].GetInstanceId() {
		t.Fatal("instance id changed across a reconnect")
	}
	out, code = execOverRelay(t, g2, s, "sh", "-c", "echo again; exit 9")
	if code != 9 || out != "again\n" {
		t.Fatalf("exec after restart: %q %d", out, code)
	}
	time.Sleep(500 * time.Millisecond)
	g2.mu.Lock()
	defer g2.mu.Unlock()
	if len(g2.exits) != 0 {
		t.Fatalf("exit re-reported after reconnect: %v", g2.exits)
	}
	for _, l := range g2.logs {
		if strings.HasPrefix(l.GetMessage(), "main-started") {
			t.Fatal("main process restarted after reconnect")
		}
	}
}

func TestSandboxEnvDropsSecrets(t *testing.T) {
	u := &sandboxuser.User{Name: "sandbox", UID: 1000, GID: 1000, Home: "/sandbox", Shell: "/bin/bash"}
	env := SandboxEnv([]string{"PATH=/img/bin", "OPENSHELL_SANDBOX_TOKEN_FILE=/run/t", "OPENSHELL_SANDBOX_ID=x", "HOME=/root", "LANG=C.UTF-8"},
		u, map[string]string{"A": "1", "LANG": "en_US.UTF-8"})
	got := strings.Join(env, "\n")
	for _, want := range []string{"PATH=/img/bin", "OPENSHELL_SANDBOX_ID=x", "HOME=/sandbox", "USER=sandbox", "SHELL=/bin/bash", "A=1", "LANG=en_US.UTF-8"} {
		if !strings.Contains(got+"\n", want+"\n") {
			t.Fatalf("env lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "TOKEN") || strings.Contains(got, "HOME=/root") {
		t.Fatalf("env leaks:\n%s", got)
	}
}

// runAsRoot makes a sandbox root whose account files hold an image user (node), a
// policy account (agent, member of tools) and a spare group (other).
func runAsRoot(t *testing.T) string {
	t.Helper()
	// The accounts must reach their working directory under it.
	base := agentReachableDir(t, "supervisor-runas-")
	root := filepath.Join(base, "root")
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	pw := "root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh\nagent:x:2345:2345:agent:/home/agent:/bin/sh\n"
	gr := "root:x:0:\nnode:x:1000:\nagent:x:2345:\ntools:x:3456:agent\nother:x:4567:\n"
	if err := os.WriteFile(filepath.Join(root, "etc", "passwd"), []byte(pw), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "group"), []byte(gr), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestResolveUserRunAs(t *testing.T) {
	testenv.RequireRoot(t) // the account switch and the chown of the working directory
	tests := []struct {
		name      string
		imageUser string
		proc      policy.Process
		uid, gid  uint32
		groups    []uint32
		user      string
		errSub    []string
		errIs     error
	}{
		{name: "policy user wins over the image USER", imageUser: "node", proc: policy.Process{RunAsUser: "agent"},
			user: "agent", uid: 2345, gid: 2345, groups: []uint32{3456}},
		{name: "numeric uid and gid", imageUser: "node", proc: policy.Process{RunAsUser: "2345", RunAsGroup: "4567"},
			user: "agent", uid: 2345, gid: 4567, groups: []uint32{3456}},
		{name: "group overrides the primary gid", proc: policy.Process{RunAsUser: "agent", RunAsGroup: "tools"},
			user: "agent", uid: 2345, gid: 3456},
		{name: "the default keeps the image USER", imageUser: "node", proc: policy.Default().Process,
			user: "node", uid: 1000, gid: 1000},
		{name: "the default with a group", imageUser: "node", proc: policy.Process{RunAsUser: "sandbox", RunAsGroup: "other"},
			user: "node", uid: 1000, gid: 4567},
		{name: "the default creates the sandbox user", proc: policy.Process{},
			user: sandboxuser.DefaultName, uid: 1001, gid: 1001},
		{name: "unknown user", imageUser: "node", proc: policy.Process{RunAsUser: "ghost"}, errIs: sandboxuser.ErrNoAccount,
			errSub: []string{`process.run_as_user "ghost"`, "add the user to the sandbox image", "passwd"}},
		{name: "unknown uid", proc: policy.Process{RunAsUser: "4242"}, errIs: sandboxuser.ErrNoAccount,
			errSub: []string{`process.run_as_user "4242"`}},
		{name: "unknown group", proc: policy.Process{RunAsUser: "agent", RunAsGroup: "nosuch"}, errIs: sandboxuser.ErrNoAccount,
			errSub: []string{`process.run_as_group "nosuch"`, "add the group to the sandbox image"}},
		{name: "unknown group with the default user", imageUser: "node", proc: policy.Process{RunAsGroup: "nosuch"}, errIs: sandboxuser.ErrNoAccount,
			errSub: []string{`process.run_as_group "nosuch"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := runAsRoot(t)
			sbDir := filepath.Join(filepath.Dir(root), "sandbox")
			cfg := &bootstrap.Config{ImageUser: tc.imageUser}
			u, dir, err := resolveUser(cfg, Options{Root: root, SandboxDir: sbDir}, tc.proc)
			if tc.errIs != nil {
				if !errors.Is(err, tc.errIs) {
					t.Fatalf("resolveUser = %+v, %v; want %v", u, err, tc.errIs)
				}
				for _, s := range tc.errSub {
					if !strings.Contains(err.Error(), s) {
						t.Fatalf("error %q lacks %q", err, s)
					}
				}
				if _, serr := os.Stat(filepath.Join(root, "etc", "passwd")); serr == nil {
					if data, _ := os.ReadFile(filepath.Join(root, "etc", "passwd")); strings.Contains(string(data), "sandbox:") {
						t.Fatal("a failed policy account still added the sandbox user")
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if u.Name != tc.user || u.UID != tc.uid || u.GID != tc.gid || !slices.Equal(u.Groups, tc.groups) {
				t.Fatalf("resolveUser = %+v", u)
			}
			// /sandbox belongs to the account the programs run as.
			var st syscall.Stat_t
			if err := syscall.Stat(dir, &st); err != nil || dir != sbDir || st.Uid != tc.uid || st.Gid != tc.gid {
				t.Fatalf("working directory %s: %v uid %d gid %d", dir, err, st.Uid, st.Gid)
			}
			cred := u.Credential()
			if cred == nil || cred.Uid != tc.uid || cred.Gid != tc.gid {
				t.Fatalf("credential %+v", cred)
			}
		})
	}
}

// TestRunAsEndToEnd: a bootstrap policy naming an account makes the main process and
// exec sessions run as it, with its supplementary groups and the policy's group.
func TestRunAsEndToEnd(t *testing.T) {
	testenv.RequireRoot(t)
	root := runAsRoot(t)
	base := filepath.Dir(root)
	sbDir := filepath.Join(base, "sandbox")
	g := newGW()
	addr, _ := serveGW(t, g, "127.0.0.1:0")
	cfg := &bootstrap.Config{
		Endpoint: "http://" + addr, SandboxID: "sb-runas", SandboxName: "box", Token: "tok", ImageUser: "node",
		PolicyYAML: []byte("version: 1\nprocess:\n  run_as_user: agent\n  run_as_group: other\n"),
		Main:       bootstrap.MainProcessSpec{Version: 1, Command: []string{"/bin/sh", "-c", "echo $$ > main.pid; while :; do sleep 1; done"}},
	}
	runErr := runInBackground(t, cfg, Options{RunDir: filepath.Join(base, "run"), Root: root, SandboxDir: sbDir})
	var s grpc.BidiStreamingServer[pb.SupervisorMessage, pb.GatewayMessage]
	select {
	case s = <-g.sessions:
	case err := <-runErr:
		t.Fatalf("Run ended: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no session")
	}
	out, code := execOverRelay(t, g, s, "sh", "-c", `id -u; id -g; id -G; echo "USER=$USER"`)
	if code != 0 {
		t.Fatalf("exec exit %d: %s", code, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || lines[0] != "2345" || lines[1] != "4567" || !slices.Equal(strings.Fields(lines[2]), []string{"4567", "3456"}) || lines[3] != "USER=agent" {
		t.Fatalf("exec identity %q, want uid 2345 gid 4567 groups [4567 3456] USER=agent", out)
	}
	// The main process: its uid, gid and groups from /proc.
	var pid string
	deadline := time.Now().Add(10 * time.Second)
	for pid == "" {
		b, _ := os.ReadFile(filepath.Join(sbDir, "main.pid"))
		pid = strings.TrimSpace(string(b))
		if pid == "" && time.Now().After(deadline) {
			t.Fatal("the main process wrote no pid file")
		}
		time.Sleep(50 * time.Millisecond)
	}
	status, err := os.ReadFile(filepath.Join("/proc", pid, "status"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"Uid": "2345 2345 2345 2345", "Gid": "4567 4567 4567 4567", "Groups": "3456"}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, _ := strings.Cut(line, ":")
		if w, ok := want[k]; ok {
			if got := strings.Join(strings.Fields(v), " "); got != w {
				t.Fatalf("main process %s: %q, want %q", k, got, w)
			}
			delete(want, k)
		}
	}
	if len(want) != 0 {
		t.Fatalf("/proc/%s/status lacks %v", pid, want)
	}
}

// TestRunAsUnknownAccount: a policy account the image lacks fails the start with an
// error naming the field, the account and the fix, also shipped to the gateway.
func TestRunAsUnknownAccount(t *testing.T) {
	root := runAsRoot(t)
	base := filepath.Dir(root)
	g := newGW()
	addr, _ := serveGW(t, g, "127.0.0.1:0")
	cfg := &bootstrap.Config{
		Endpoint: "http://" + addr, SandboxID: "sb-ghost", SandboxName: "box", Token: "tok",
		PolicyYAML: []byte("version: 1\nprocess:\n  run_as_user: ghost\n"),
		Main:       bootstrap.MainProcessSpec{Version: 1, Command: []string{"/bin/sh", "-c", "touch started"}},
	}
	no := false
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	err := Run(ctx, cfg, Options{RunDir: filepath.Join(base, "run"), Root: root, SandboxDir: filepath.Join(base, "sandbox"),
		SelfExe: os.Args[0], ReapOrphans: &no, StopGrace: time.Second})
	if !errors.Is(err, sandboxuser.ErrNoAccount) {
		t.Fatalf("Run = %v, want an unknown-account error", err)
	}
	for _, s := range []string{`process.run_as_user "ghost"`, "add the user to the sandbox image", "(in the policy file "} {
		if !strings.Contains(err.Error(), s) {
			t.Fatalf("error %q lacks %q", err, s)
		}
	}
	if _, serr := os.Stat(filepath.Join(base, "sandbox", "started")); serr == nil {
		t.Fatal("the main process ran")
	}
	// Run flushes its shipped logs before returning.
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, l := range g.logs {
		if l.GetLevel() == "ERROR" && strings.Contains(l.GetMessage(), "sandbox start failed") && strings.Contains(l.GetMessage(), `process.run_as_user "ghost"`) {
			return
		}
	}
	t.Fatalf("the start error was not shipped; logs: %v", g.logs)
}

// TestResolveUserNotRoot: a supervisor that is not root runs everything as itself; a
// policy account that is its own identity is accepted, another one is refused (it
// cannot switch), and an unknown one still names the field. The checks run in a
// copy of this test binary started as agent (uid 2345).
func TestResolveUserNotRoot(t *testing.T) {
	if os.Getenv("OPENSHELL_TEST_NOTROOT_ROOT") != "" {
		notRootChild(t, os.Getenv("OPENSHELL_TEST_NOTROOT_ROOT"))
		return
	}
	testenv.RequireRoot(t) // to start the copy as another user
	root := runAsRoot(t)
	base := filepath.Dir(root)
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	child := filepath.Join(base, "sandbox-child")
	if err := os.Mkdir(child, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(child, 2345, 2345); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(base, "supervisor.test")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), bin, "-test.run=^TestResolveUserNotRoot$", "-test.v")
	cmd.Env = append(os.Environ(), "OPENSHELL_TEST_NOTROOT_ROOT="+root, "HOME="+base)
	cmd.Dir = base
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 2345, Gid: 2345}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestResolveUserNotRoot") {
		t.Fatalf("child as uid 2345: %v\n%s", err, out)
	}
}

func notRootChild(t *testing.T, root string) {
	if os.Geteuid() != 2345 {
		t.Fatalf("child runs as uid %d", os.Geteuid())
	}
	o := Options{Root: root, SandboxDir: filepath.Join(filepath.Dir(root), "sandbox-child")}
	u, _, err := resolveUser(&bootstrap.Config{}, o, policy.Process{RunAsUser: "agent"})
	if err != nil || u.UID != 2345 || u.Name != "agent" {
		t.Fatalf("own account: %+v %v", u, err)
	}
	if u, _, err = resolveUser(&bootstrap.Config{}, o, policy.Default().Process); err != nil || u.UID != 2345 {
		t.Fatalf("default: %+v %v", u, err)
	}
	_, _, err = resolveUser(&bootstrap.Config{}, o, policy.Process{RunAsUser: "node"})
	if err == nil || !strings.Contains(err.Error(), "cannot switch") || !strings.Contains(err.Error(), "node (uid 1000") {
		t.Fatalf("another account: %v", err)
	}
	_, _, err = resolveUser(&bootstrap.Config{}, o, policy.Process{RunAsUser: "agent", RunAsGroup: "other"})
	if err == nil || !strings.Contains(err.Error(), "cannot switch") {
		t.Fatalf("another group: %v", err)
	}
	_, _, err = resolveUser(&bootstrap.Config{}, o, policy.Process{RunAsUser: "ghost"})
	if !errors.Is(err, sandboxuser.ErrNoAccount) || !strings.Contains(err.Error(), "process.run_as_user") {
		t.Fatalf("unknown account: %v", err)
	}
}

// runInBackground runs the supervisor with o (this test binary as its own helper,
// no orphan reaping, a short stop grace) until the test ends; the channel receives
// Run's result. The test's cleanup stops it and checks that it returns cleanly.
func runInBackground(t *testing.T, cfg *bootstrap.Config, o Options) <-chan error {
	t.Helper()
	no := false
	o.SelfExe, o.ReapOrphans, o.StopGrace = os.Args[0], &no, 2*time.Second
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- Run(ctx, cfg, o) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-runErr:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	return runErr
}
