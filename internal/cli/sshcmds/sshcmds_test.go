package sshcmds

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/gateway/sshrelay"
	"github.com/openshell/openshell/supervisor/reaper"
	"github.com/openshell/openshell/supervisor/sandboxuser"
	"github.com/openshell/openshell/supervisor/sshd"
)

// miniGateway is a real gRPC server with the user-facing RPCs these commands use,
// wired to the real supervisor SSH server on a Unix socket (the relay reduced to a
// socket dial). It lets the commands run end to end without a sandbox.
type miniGateway struct {
	pb.UnimplementedOpenShellServer
	sock  string
	token string
	logs  []*pb.SandboxLogLine
	// logsReq is the last GetSandboxLogs request (guarded by mu).
	logsReq *pb.GetSandboxLogsRequest
	// key is the host key the supervisor "registered"; tests replace it to play a
	// supervisor whose SSH server presents another key.
	mu  sync.Mutex
	key ssh.PublicKey
	// transfer serves a transfer relay, as the supervisor does on the relay stream.
	transfer func(ctx context.Context, c net.Conn, t *pb.TransferRelayTarget)
}

func (g *miniGateway) hostKey() ssh.PublicKey {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.key
}

func (g *miniGateway) setHostKey(k ssh.PublicKey) {
	g.mu.Lock()
	g.key = k
	g.mu.Unlock()
}

// keyedConn carries the registered host key, as the gateway's relay connections do.
type keyedConn struct {
	net.Conn
	key ssh.PublicKey
}

func (c keyedConn) HostKey() ssh.PublicKey { return c.key }

func (g *miniGateway) GetSandbox(_ context.Context, r *pb.GetSandboxRequest) (*pb.SandboxResponse, error) {
	if r.GetName() != "box" {
		return nil, status.Errorf(codes.NotFound, "sandbox %q not found", r.GetName())
	}
	return &pb.SandboxResponse{Sandbox: &pb.Sandbox{Metadata: metaID("sb-1", "box")}}, nil
}

func (g *miniGateway) dial() (net.Conn, error) {
	c, err := net.Dial("unix", g.sock)
	if err != nil {
		return nil, err
	}
	return keyedConn{Conn: c, key: g.hostKey()}, nil
}

// open answers every relay with the SSH server, as a supervisor older than exec
// relays does (exec falls back to SSH).
func (g *miniGateway) open(context.Context, *pb.RelayOpen) (io.ReadWriteCloser, error) {
	return g.dial()
}

func (g *miniGateway) ExecSandbox(r *pb.ExecSandboxRequest, s grpc.ServerStreamingServer[pb.ExecSandboxEvent]) error {
	return sshrelay.Exec(s.Context(), g.open, r, s.Send)
}

func (g *miniGateway) ExecSandboxInteractive(s grpc.BidiStreamingServer[pb.ExecSandboxInput, pb.ExecSandboxEvent]) error {
	first, err := s.Recv()
	if err != nil {
		return err
	}
	return sshrelay.Interactive(s.Context(), g.open, first.GetStart(), s.Recv, s.Send)
}

func (g *miniGateway) CreateSshSession(_ context.Context, r *pb.CreateSshSessionRequest) (*pb.CreateSshSessionResponse, error) {
	return &pb.CreateSshSessionResponse{SandboxId: r.GetSandboxId(), Token: g.token, HostKeyFingerprint: ssh.FingerprintSHA256(g.hostKey())}, nil
}

func (g *miniGateway) ForwardTcp(s grpc.BidiStreamingServer[pb.TcpForwardFrame, pb.TcpForwardFrame]) error {
	f, err := s.Recv()
	if err != nil {
		return err
	}
	if f.GetInit().GetAuthorizationToken() != g.token {
		return status.Error(codes.PermissionDenied, "ssh session token is invalid or expired")
	}
	if t := f.GetInit().GetTransfer(); t != nil {
		return g.forwardTransfer(s, t)
	}
	c, err := g.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if s.Send(&pb.TcpForwardFrame{Payload: &pb.TcpForwardFrame_Data{Data: append([]byte(nil), buf[:n]...)}}) != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	for {
		f, err := s.Recv()
		if err != nil {
			c.(keyedConn).Conn.(*net.UnixConn).CloseWrite()
			time.Sleep(50 * time.Millisecond)
			return nil
		}
		if _, err := c.Write(f.GetData()); err != nil {
			return nil
		}
	}
}

// forwardTransfer pumps a ForwardTcp stream to the transfer service over an
// in-memory pipe (the supervisor's relay stream reduced to a pipe).
func (g *miniGateway) forwardTransfer(s grpc.BidiStreamingServer[pb.TcpForwardFrame, pb.TcpForwardFrame], t *pb.TransferRelayTarget) error {
	c, sc := net.Pipe()
	defer c.Close()
	go g.transfer(s.Context(), sc, t)
	go func() {
		defer c.Close()
		for {
			f, err := s.Recv()
			if err != nil {
				return
			}
			if _, err := c.Write(f.GetData()); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 256<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if serr := s.Send(&pb.TcpForwardFrame{Payload: &pb.TcpForwardFrame_Data{Data: buf[:n]}}); serr != nil {
				return serr
			}
		}
		if err != nil {
			return nil
		}
	}
}

func (g *miniGateway) GetSandboxLogs(_ context.Context, r *pb.GetSandboxLogsRequest) (*pb.GetSandboxLogsResponse, error) {
	g.mu.Lock()
	g.logsReq = r
	g.mu.Unlock()
	return &pb.GetSandboxLogsResponse{Logs: g.logs}, nil
}

func setup(t *testing.T) (DialFunc, string) {
	t.Helper()
	dial, dir, _ := setupGateway(t)
	return dial, dir
}

// setupGateway is setup that also returns the mini gateway and its address.
func setupGateway(t *testing.T) (DialFunc, string, *gwHandle) {
	t.Helper()
	dir := t.TempDir()
	r := reaper.New(false)
	t.Cleanup(func() { r.Close() })
	u := &sandboxuser.User{Name: "me", UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Home: dir, Shell: "/bin/sh"}
	srv, err := sshd.New(sshd.Config{User: u, Env: append([]string{"PATH=/usr/bin:/bin"}, u.Env()...), Dir: dir, Reaper: r})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "ssh.sock")
	ln, err := sshd.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sshDone := make(chan struct{})
	go func() { _ = srv.Serve(ctx, ln); close(sshDone) }()

	g := &miniGateway{sock: sock, token: "sess-tok", key: srv.HostKey(), transfer: srv.ServeTransfer, logs: []*pb.SandboxLogLine{
		{TimestampMs: 0, Level: "INFO", Source: "sandbox", Target: "main", Message: "hello from main", Fields: map[string]string{"stream": "stdout"}},
	}}
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	pb.RegisterOpenShellServer(gs, g)
	go gs.Serve(gl)
	t.Cleanup(func() { gs.Stop(); cancel(); <-sshDone })
	return dialAddr(gl.Addr().String()), dir, &gwHandle{g: g, addr: gl.Addr().String(), serverKey: srv.HostKey()}
}

type gwHandle struct {
	g         *miniGateway
	addr      string
	serverKey ssh.PublicKey // what the SSH server presents
}

func dialAddr(addr string) DialFunc {
	return func(ctx context.Context) (*grpc.ClientConn, error) {
		return grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
}

// run executes one command the way cmd/openshell mounts them.
func run(t *testing.T, dial DialFunc, stdin io.Reader, args ...string) (string, string, error) {
	t.Helper()
	root := &cobra.Command{Use: "openshell", SilenceUsage: true, SilenceErrors: true}
	root.PersistentFlags().String("gateway", "", "gateway address")
	sb := &cobra.Command{Use: "sandbox"}
	sb.AddCommand(Commands(dial)...)
	root.AddCommand(sb, SSHProxyCommand(dial))
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	if stdin != nil {
		root.SetIn(stdin)
	}
	root.SetArgs(args)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

func TestExecExitCodeAndOutput(t *testing.T) {
	dial, _ := setup(t)
	out, errOut, err := run(t, dial, nil, "sandbox", "exec", "-n", "box", "--env", "X=1 2", "--", "sh", "-c", `echo "out $X"; echo err >&2; exit 7`)
	var ee *ExitCodeError
	if !errors.As(err, &ee) || ee.Code != 7 {
		t.Fatalf("err = %v, want ExitCodeError{7}", err)
	}
	if out != "out 1 2\n" || errOut != "err\n" {
		t.Fatalf("stdout %q stderr %q", out, errOut)
	}
	out, _, err = run(t, dial, strings.NewReader("piped"), "sandbox", "exec", "box", "-i", "--", "cat")
	if err != nil || out != "piped" {
		t.Fatalf("stdin exec: %q, %v", out, err)
	}
	_, _, err = run(t, dial, nil, "sandbox", "exec", "-n", "box", "--timeout", "1s", "--", "sleep", "30")
	if !errors.As(err, &ee) || ee.Code != 124 {
		t.Fatalf("timeout: err = %v, want exit 124", err)
	}
	_, _, err = run(t, dial, nil, "sandbox", "exec", "-n", "nope", "--", "true")
	if err == nil || !strings.Contains(err.Error(), `sandbox "nope" not found`) {
		t.Fatalf("unknown sandbox: err = %v", err)
	}
	// --tty without a local terminal still streams through the interactive RPC.
	out, _, err = run(t, dial, strings.NewReader(""), "sandbox", "exec", "-n", "box", "--tty", "--", "tty")
	if err != nil || !strings.Contains(out, "/dev/pts/") {
		t.Fatalf("tty exec: %q, %v", out, err)
	}
}

func makeTree(t *testing.T, root string) {
	t.Helper()
	files := map[string]struct {
		data string
		mode fs.FileMode
	}{
		"a.txt":           {"alpha", 0o644},
		"bin/run.sh":      {"#!/bin/sh\necho hi\n", 0o755},
		"deep/x/y/z.dat":  {strings.Repeat("z", 1<<20+17), 0o600},
		"deep/empty-file": {"", 0o640},
	}
	for p, f := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(f.data), f.mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(full, f.mode)
	}
	os.Mkdir(filepath.Join(root, "emptydir"), 0o750)
	os.Chmod(filepath.Join(root, "emptydir"), 0o750)
}

// treeSum describes a tree: relative path, mode and content hash of every entry.
func treeSum(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		info, _ := d.Info()
		b.WriteString(rel + " " + info.Mode().String())
		if info.Mode().IsRegular() {
			data, _ := os.ReadFile(p)
			fmt.Fprintf(&b, " %x", sha256.Sum256(data))
		}
		b.WriteString("\n")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestUploadDownloadTree(t *testing.T) {
	dial, sandboxDir := setup(t)
	src := filepath.Join(t.TempDir(), "tree")
	makeTree(t, src)
	if _, _, err := run(t, dial, nil, "sandbox", "upload", "box", src, "up"); err != nil {
		t.Fatal(err)
	}
	if got, want := treeSum(t, filepath.Join(sandboxDir, "up")), treeSum(t, src); got != want {
		t.Fatalf("uploaded tree differs:\n%s\nwant\n%s", got, want)
	}
	dst := t.TempDir()
	if _, _, err := run(t, dial, nil, "sandbox", "download", "box", "up", dst); err != nil {
		t.Fatal(err)
	}
	if got, want := treeSum(t, filepath.Join(dst, "up")), treeSum(t, src); got != want {
		t.Fatalf("downloaded tree differs:\n%s\nwant\n%s", got, want)
	}
	// A single file into an existing directory keeps its name.
	if _, _, err := run(t, dial, nil, "sandbox", "upload", "box", filepath.Join(src, "a.txt"), "up/bin"); err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(filepath.Join(sandboxDir, "up", "bin", "a.txt")); err != nil || string(data) != "alpha" {
		t.Fatalf("single-file upload: %q, %v", data, err)
	}
	if _, _, err := run(t, dial, nil, "sandbox", "download", "box", "no/such/file", dst); err == nil || !strings.Contains(err.Error(), "no/such/file") {
		t.Fatalf("missing remote file: err = %v", err)
	}
}

func TestSSHProxyBridges(t *testing.T) {
	dial, _ := setup(t)
	// Speak SSH's first line through the proxy: the server's banner comes back.
	pr, pw := io.Pipe()
	go func() {
		pw.Write([]byte("SSH-2.0-test\r\n"))
		time.Sleep(300 * time.Millisecond)
		pw.Close()
	}()
	out, _, err := run(t, dial, pr, "ssh-proxy", "--name", "box")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, "SSH-2.0-openshell") {
		t.Fatalf("proxy output %q", out)
	}
	_, _, err = run(t, dial, strings.NewReader(""), "ssh-proxy", "--name", "missing")
	if err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("proxy to missing sandbox: %v", err)
	}
}

func TestSSHConfigAndLogs(t *testing.T) {
	dial, _ := setup(t)
	out, _, err := run(t, dial, nil, "--gateway", "https://gw:17670", "sandbox", "ssh-config", "box")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Host openshell-box\n", "User sandbox", "StrictHostKeyChecking yes", "UserKnownHostsFile /dev/null",
		"GlobalKnownHostsFile /dev/null", "ssh-proxy --gateway=https://gw:17670 --name box",
		"KnownHostsCommand ", "ssh-proxy --gateway=https://gw:17670 --known-hosts --name box"} {
		if !strings.Contains(out, want) {
			t.Fatalf("ssh-config lacks %q:\n%s", want, out)
		}
	}
	out, _, err = run(t, dial, nil, "sandbox", "logs", "box")
	if err != nil {
		t.Fatal(err)
	}
	if out != "1970-01-01T00:00:00.000Z INFO  sandbox/main: hello from main\n" {
		t.Fatalf("logs output %q", out)
	}
}

// logs --since/--level/--source reach the gateway as its filter fields; bad values
// are refused before any call, naming the flag.
func TestLogsFilters(t *testing.T) {
	dial, _, h := setupGateway(t)
	before := time.Now()
	if _, _, err := run(t, dial, nil, "sandbox", "logs", "box", "--since", "10m", "--level", "warning", "--source", "sandbox,gateway", "--source", "sandbox"); err != nil {
		t.Fatal(err)
	}
	h.g.mu.Lock()
	req := h.g.logsReq
	h.g.mu.Unlock()
	wantSince := before.Add(-10 * time.Minute).UnixMilli()
	if d := req.GetSinceMs() - wantSince; d < -1000 || d > 5000 {
		t.Errorf("since_ms = %d, want about now-10m = %d", req.GetSinceMs(), wantSince)
	}
	if req.GetMinLevel() != "WARN" || strings.Join(req.GetSources(), ",") != "sandbox,gateway" {
		t.Errorf("min_level %q sources %v", req.GetMinLevel(), req.GetSources())
	}
	for _, tc := range []struct{ flag, val, want string }{
		{"--since", "yesterday", "--since \"yesterday\" is neither a duration"},
		{"--since", "-5m", "must be positive"},
		{"--level", "loud", "--level \"loud\": use one of trace, debug, info, warn, error"},
		{"--source", "kernel", "--source \"kernel\": use gateway or sandbox"},
	} {
		if _, _, err := run(t, dial, nil, "sandbox", "logs", "box", tc.flag, tc.val); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("logs %s %s: err = %v, want %q", tc.flag, tc.val, err, tc.want)
		}
	}
	f, err := ParseLogFilter("2026-01-02T15:04:05Z", "", nil, time.Now())
	if err != nil || f.SinceMs != time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC).UnixMilli() {
		t.Errorf("RFC 3339 --since: %+v %v", f, err)
	}
}

func TestParseEnv(t *testing.T) {
	env, err := ParseEnv([]string{"A=1", "B=x=y", "C="})
	if err != nil || env["A"] != "1" || env["B"] != "x=y" || env["C"] != "" {
		t.Fatalf("ParseEnv = %v, %v", env, err)
	}
	if _, err := ParseEnv([]string{"novalue"}); err == nil {
		t.Fatal("accepted an assignment without =")
	}
}

func FuzzParseEnv(f *testing.F) {
	for _, s := range []string{"A=1", "=x", "novalue", "K==v", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, kv string) {
		env, err := ParseEnv([]string{kv})
		if err != nil {
			return
		}
		k, v, _ := strings.Cut(kv, "=")
		if len(env) != 1 || env[k] != v || k == "" {
			t.Fatalf("ParseEnv(%q) = %v", kv, env)
		}
	})
}

func TestProgressBarOnlyOnATerminal(t *testing.T) {
	dial, _ := setup(t)
	src := filepath.Join(t.TempDir(), "nine")
	if err := os.WriteFile(src, bytes.Repeat([]byte{7}, 9<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	// Not a terminal: nothing on stderr.
	_, errOut, err := run(t, dial, nil, "sandbox", "upload", "box", src, "plain")
	if err != nil || errOut != "" {
		t.Fatalf("upload to a pipe: err %v, stderr %q", err, errOut)
	}
	// A terminal: a progress bar ending at 100%.
	master, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	var seen syncBuf
	go io.Copy(&seen, master)
	root := &cobra.Command{Use: "openshell", SilenceUsage: true, SilenceErrors: true}
	sb := &cobra.Command{Use: "sandbox"}
	sb.AddCommand(Commands(dial)...)
	root.AddCommand(sb)
	root.SetErr(tty)
	root.SetOut(io.Discard)
	root.SetArgs([]string{"sandbox", "upload", "box", src, "withbar"})
	if err := root.ExecuteContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	tty.Close()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(seen.String(), "100.0%") {
		if time.Now().After(deadline) {
			t.Fatalf("terminal output %q has no finished progress bar", seen.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
