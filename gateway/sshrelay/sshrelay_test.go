package sshrelay

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/supervisor/reaper"
	"github.com/openshell/openshell/supervisor/sandboxuser"
	"github.com/openshell/openshell/supervisor/sshd"
)

// startSSHD runs the real supervisor SSH server on a Unix socket (as the current
// user) and returns a dialer, standing in for the relay connection.
func startSSHD(t *testing.T) (dial func() net.Conn, dir string) {
	t.Helper()
	dir = t.TempDir()
	r := reaper.New(false)
	t.Cleanup(func() { r.Close() })
	u := &sandboxuser.User{Name: "me", UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Home: dir, Shell: "/bin/sh"}
	srv, err := sshd.New(sshd.Config{User: u, Env: append([]string{"PATH=/usr/bin:/bin"}, u.Env()...), Dir: dir, Reaper: r})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "run", "ssh.sock")
	ln, err := sshd.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return func() net.Conn {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		return keyedConn{Conn: c, key: srv.HostKey()}
	}, dir
}

// keyedConn is a connection to an SSH server with the host key its supervisor
// registered, as the hub's relay connections carry it.
type keyedConn struct {
	net.Conn
	key ssh.PublicKey
}

func (c keyedConn) HostKey() ssh.PublicKey { return c.key }

// TestHostKeyPinned: exec through a relay whose SSH server presents a key other than
// the one registered (or when none was registered) fails before any command runs,
// with an error naming both fingerprints.
func TestHostKeyPinned(t *testing.T) {
	dial, dir := startSSHD(t)
	_, other, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	otherSigner, _ := ssh.NewSignerFromKey(other)
	marker := filepath.Join(dir, "ran")
	req := &pb.ExecSandboxRequest{Command: []string{"touch", marker}}
	for _, tc := range []struct {
		name string
		key  ssh.PublicKey
		want []string
	}{
		{"changed key", otherSigner.PublicKey(), []string{"does not match", ssh.FingerprintSHA256(otherSigner.PublicKey())}},
		{"no key registered", nil, []string{"registered no SSH host key"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial().(keyedConn)
			var ev events
			err := Exec(t.Context(), keyedConn{Conn: c.Conn, key: tc.key}, req, ev.send)
			if status.Code(err) != codes.PermissionDenied {
				t.Fatalf("exec with a mismatched host key: %v (code %v), want PermissionDenied", err, status.Code(err))
			}
			for _, w := range append(tc.want, ssh.FingerprintSHA256(c.key)) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if _, err := os.Stat(marker); err == nil {
				t.Fatal("the command ran although the host key did not match")
			}
			var ch chan *pb.ExecSandboxInput
			err = Interactive(t.Context(), keyedConn{Conn: dial().(keyedConn).Conn, key: tc.key}, req,
				func() (*pb.ExecSandboxInput, error) { <-ch; return nil, io.EOF }, ev.send)
			if status.Code(err) != codes.PermissionDenied {
				t.Fatalf("interactive with a mismatched host key: %v", err)
			}
		})
	}
	// The registered key works.
	var ev events
	if err := Exec(t.Context(), dial(), req, ev.send); err != nil {
		t.Fatal(err)
	}
	ev.check(t, 0)
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("the command did not run with the registered key: %v", err)
	}
}

type events struct {
	mu             sync.Mutex
	stdout, stderr strings.Builder
	exits          []int32
	afterExit      bool
}

func (e *events) send(ev *pb.ExecSandboxEvent) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.exits) > 0 {
		e.afterExit = true
	}
	switch p := ev.Payload.(type) {
	case *pb.ExecSandboxEvent_Stdout:
		e.stdout.Write(p.Stdout.GetData())
	case *pb.ExecSandboxEvent_Stderr:
		e.stderr.Write(p.Stderr.GetData())
	case *pb.ExecSandboxEvent_Exit:
		e.exits = append(e.exits, p.Exit.GetExitCode())
	}
	return nil
}

func (e *events) check(t *testing.T, code int32) {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.exits) != 1 || e.exits[0] != code || e.afterExit {
		t.Fatalf("exit events %v (events after exit: %v), want exactly [%d]; stdout %q stderr %q", e.exits, e.afterExit, code, e.stdout.String(), e.stderr.String())
	}
}

func TestExec(t *testing.T) {
	dial, dir := startSSHD(t)
	sub := filepath.Join(dir, "sub dir")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	var ev events
	err := Exec(t.Context(), dial(), &pb.ExecSandboxRequest{
		Command:     []string{"sh", "-c", `printf '%s|' "$0" "$1" "$V" "$(pwd)"; echo err >&2; exit 3`, "it's", "$HOME; rm -rf /"},
		Environment: map[string]string{"V": "va'l ue"},
		Workdir:     sub,
	}, ev.send)
	if err != nil {
		t.Fatal(err)
	}
	ev.check(t, 3)
	if want := "it's|$HOME; rm -rf /|va'l ue|" + sub + "|"; ev.stdout.String() != want || ev.stderr.String() != "err\n" {
		t.Fatalf("stdout %q (want %q) stderr %q", ev.stdout.String(), want, ev.stderr.String())
	}

	var ev2 events
	if err := Exec(t.Context(), dial(), &pb.ExecSandboxRequest{Command: []string{"wc", "-c"}, Stdin: []byte("12345")}, ev2.send); err != nil {
		t.Fatal(err)
	}
	ev2.check(t, 0)
	if strings.TrimSpace(ev2.stdout.String()) != "5" {
		t.Fatalf("stdin not delivered: %q", ev2.stdout.String())
	}

	var ev3 events
	if err := Exec(t.Context(), dial(), &pb.ExecSandboxRequest{Command: []string{"tty"}, Tty: true, Cols: 90, Rows: 20}, ev3.send); err != nil {
		t.Fatal(err)
	}
	ev3.check(t, 0)
	if !strings.Contains(ev3.stdout.String(), "/dev/pts/") {
		t.Fatalf("tty exec printed %q", ev3.stdout.String())
	}
}

func TestExecTimeout(t *testing.T) {
	dial, _ := startSSHD(t)
	var ev events
	start := time.Now()
	err := Exec(t.Context(), dial(), &pb.ExecSandboxRequest{Command: []string{"sh", "-c", "echo started; sleep 30"}, TimeoutSeconds: 1}, ev.send)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("timeout took %v", d)
	}
	ev.check(t, TimeoutExitCode)
}

func TestExecBadInput(t *testing.T) {
	dial, _ := startSSHD(t)
	var ev events
	if err := Exec(t.Context(), dial(), &pb.ExecSandboxRequest{Command: []string{"true"}, Environment: map[string]string{"BAD-KEY": "x"}}, ev.send); err == nil || !strings.Contains(err.Error(), "BAD-KEY") {
		t.Fatalf("bad env key: err = %v", err)
	}
	// A dead relay (the peer closed) is a clear error, not a hang or a fake exit.
	a, b := net.Pipe()
	b.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	err := Exec(ctx, a, &pb.ExecSandboxRequest{Command: []string{"true"}}, ev.send)
	if err == nil || !strings.Contains(err.Error(), "ssh handshake") {
		t.Fatalf("dead relay: err = %v", err)
	}
	if len(ev.exits) != 0 {
		t.Fatalf("exit event sent for a failed relay: %v", ev.exits)
	}
}

func TestInteractivePTYResize(t *testing.T) {
	dial, _ := startSSHD(t)
	in := make(chan *pb.ExecSandboxInput, 8)
	recv := func() (*pb.ExecSandboxInput, error) {
		m, ok := <-in
		if !ok {
			return nil, io.EOF
		}
		return m, nil
	}
	var ev events
	done := make(chan error, 1)
	go func() {
		done <- Interactive(t.Context(), dial(), &pb.ExecSandboxRequest{Command: []string{"sh"}, Tty: true, Cols: 100, Rows: 30}, recv, ev.send)
	}()
	in <- &pb.ExecSandboxInput{Payload: &pb.ExecSandboxInput_Stdin{Stdin: []byte("stty size\n")}}
	waitOut := func(sub string) {
		deadline := time.Now().Add(10 * time.Second)
		for {
			ev.mu.Lock()
			out := ev.stdout.String()
			ev.mu.Unlock()
			if strings.Contains(out, sub) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %q in %q", sub, out)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitOut("30 100")
	in <- &pb.ExecSandboxInput{Payload: &pb.ExecSandboxInput_Resize{Resize: &pb.ExecSandboxWindowResize{Cols: 120, Rows: 40}}}
	time.Sleep(100 * time.Millisecond)
	in <- &pb.ExecSandboxInput{Payload: &pb.ExecSandboxInput_Stdin{Stdin: []byte("stty size; exit 5\n")}}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("interactive session did not end")
	}
	waitOut("40 120")
	ev.check(t, 5)
}

func TestInteractiveHalfCloseIsEOF(t *testing.T) {
	dial, _ := startSSHD(t)
	in := make(chan *pb.ExecSandboxInput, 8)
	in <- &pb.ExecSandboxInput{Payload: &pb.ExecSandboxInput_Stdin{Stdin: []byte("abc")}}
	close(in)
	recv := func() (*pb.ExecSandboxInput, error) {
		m, ok := <-in
		if !ok {
			return nil, io.EOF
		}
		return m, nil
	}
	var ev events
	if err := Interactive(t.Context(), dial(), &pb.ExecSandboxRequest{Command: []string{"cat"}}, recv, ev.send); err != nil {
		t.Fatal(err)
	}
	ev.check(t, 0)
	if ev.stdout.String() != "abc" {
		t.Fatalf("cat echoed %q", ev.stdout.String())
	}
}

// unquote parses the subset of POSIX shell quoting that Quote produces.
func unquote(s string) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(s); {
		switch {
		case s[i] == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return "", false
			}
			b.WriteString(s[i+1 : i+1+j])
			i += j + 2
		case s[i] == '\\' && i+1 < len(s):
			b.WriteByte(s[i+1])
			i += 2
		case strings.IndexByte(" \t\n;&|<>()$`\"*?[]#~{}!", s[i]) >= 0:
			return "", false // would be interpreted by the shell
		default:
			b.WriteByte(s[i])
			i++
		}
	}
	return b.String(), true
}

func FuzzQuote(f *testing.F) {
	for _, s := range []string{"", "a b", "it's", "$HOME", "`id`", "a\nb", "--flag=x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		q := Quote(s)
		got, ok := unquote(q)
		if !ok || got != s || q == "" {
			t.Fatalf("Quote(%q) = %q, unquotes to %q (ok=%v)", s, q, got, ok)
		}
	})
}

func TestBuildCommand(t *testing.T) {
	got, err := BuildCommand([]string{"ls", "-l", "a b"}, map[string]string{"B": "2", "A": "x y"}, "/w d")
	if err != nil {
		t.Fatal(err)
	}
	if want := `cd '/w d' && A='x y' B=2 ls -l 'a b'`; got != want {
		t.Fatalf("BuildCommand = %q, want %q", got, want)
	}
	if _, err := BuildCommand(nil, nil, ""); err == nil {
		t.Fatal("empty argv accepted")
	}
}
