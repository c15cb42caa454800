package sshrelay

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
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
	dial, dir, _ = startServer(t)
	return dial, dir
}

// supervisors are the two kinds of supervisor an exec meets: a current one, which
// serves exec relays, and one older than exec relays, whose session takes every
// target it does not know for ssh (so exec falls back to SSH).
var supervisors = []string{"exec relay", "old supervisor, ssh"}

// opener stands in for the hub's OpenRelay: an exec target is served by the real
// server's ServeExec on one end of a pipe (unless the supervisor is old), anything
// else by its SSH server.
func opener(t *testing.T, kind string) (OpenFunc, string) {
	dial, dir, srv := startServer(t)
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	return func(ctx context.Context, target *pb.RelayOpen) (io.ReadWriteCloser, error) {
		if ex := target.GetExec(); ex != nil && kind == supervisors[0] {
			a, b := net.Pipe()
			wg.Add(1)
			go func() {
				defer wg.Done()
				srv.ServeExec(context.Background(), b, ex)
			}()
			return a, nil
		}
		return dial(), nil
	}, dir
}

// conns opens the relays on the given connections in turn.
func conns(cs ...io.ReadWriteCloser) OpenFunc {
	return func(context.Context, *pb.RelayOpen) (io.ReadWriteCloser, error) {
		if len(cs) == 0 {
			return nil, io.ErrClosedPipe
		}
		c := cs[0]
		cs = cs[1:]
		return c, nil
	}
}

// withKey dials the SSH server for every relay, presenting key as the registered one.
func withKey(dial func() net.Conn, key ssh.PublicKey) OpenFunc {
	return func(context.Context, *pb.RelayOpen) (io.ReadWriteCloser, error) {
		return keyedConn{Conn: dial().(keyedConn).Conn, key: key}, nil
	}
}

func startServer(t *testing.T) (dial func() net.Conn, dir string, srv *sshd.Server) {
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
	}, dir, srv
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
			err := Exec(t.Context(), withKey(dial, tc.key), req, ev.send)
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
			err = Interactive(t.Context(), withKey(dial, tc.key), req,
				func() (*pb.ExecSandboxInput, error) { <-ch; return nil, io.EOF }, ev.send)
			if status.Code(err) != codes.PermissionDenied {
				t.Fatalf("interactive with a mismatched host key: %v", err)
			}
		})
	}
	// The registered key works.
	var ev events
	if err := Exec(t.Context(), withKey(dial, dial().(keyedConn).key), req, ev.send); err != nil {
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

// TestExec runs on both kinds of supervisor: output, exit code, stderr apart,
// quoting-proof argv/env/workdir, stdin to EOF, a PTY, and a command that cannot start.
func TestExec(t *testing.T) {
	for _, kind := range supervisors {
		t.Run(kind, func(t *testing.T) {
			open, dir := opener(t, kind)
			sub := filepath.Join(dir, "sub dir")
			if err := os.Mkdir(sub, 0o755); err != nil {
				t.Fatal(err)
			}
			var ev events
			err := Exec(t.Context(), open, &pb.ExecSandboxRequest{
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
			if err := Exec(t.Context(), open, &pb.ExecSandboxRequest{Command: []string{"wc", "-c"}, Stdin: []byte("12345")}, ev2.send); err != nil {
				t.Fatal(err)
			}
			ev2.check(t, 0)
			if strings.TrimSpace(ev2.stdout.String()) != "5" {
				t.Fatalf("stdin not delivered: %q", ev2.stdout.String())
			}

			var ev3 events
			if err := Exec(t.Context(), open, &pb.ExecSandboxRequest{Command: []string{"tty"}, Tty: true, Cols: 90, Rows: 20}, ev3.send); err != nil {
				t.Fatal(err)
			}
			ev3.check(t, 0)
			if !strings.Contains(ev3.stdout.String(), "/dev/pts/") {
				t.Fatalf("tty exec printed %q", ev3.stdout.String())
			}

			var ev4 events
			if err := Exec(t.Context(), open, &pb.ExecSandboxRequest{Command: []string{"no-such-command-x"}}, ev4.send); err != nil {
				t.Fatal(err)
			}
			ev4.check(t, 127)
			if !strings.Contains(ev4.stderr.String(), "no-such-command-x") {
				t.Fatalf("not found: stderr %q", ev4.stderr.String())
			}

			var ev5 events // more output than one relay frame
			if err := Exec(t.Context(), open, &pb.ExecSandboxRequest{Command: []string{"head", "-c", "2500000", "/dev/zero"}}, ev5.send); err != nil {
				t.Fatal(err)
			}
			ev5.check(t, 0)
			if ev5.stdout.Len() != 2500000 {
				t.Fatalf("%d bytes of output, want 2500000", ev5.stdout.Len())
			}
		})
	}
}

func TestExecTimeout(t *testing.T) {
	for _, kind := range supervisors {
		t.Run(kind, func(t *testing.T) {
			open, _ := opener(t, kind)
			var ev events
			start := time.Now()
			err := Exec(t.Context(), open, &pb.ExecSandboxRequest{Command: []string{"sh", "-c", "echo started; sleep 30"}, TimeoutSeconds: 1}, ev.send)
			if err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("timeout took %v", d)
			}
			ev.check(t, TimeoutExitCode)
		})
	}
}

func TestExecBadInput(t *testing.T) {
	for _, kind := range supervisors {
		t.Run(kind, func(t *testing.T) {
			open, _ := opener(t, kind)
			var ev events
			if err := Exec(t.Context(), open, &pb.ExecSandboxRequest{Command: []string{"true"}, Environment: map[string]string{"BAD-KEY": "x"}}, ev.send); err == nil || !strings.Contains(err.Error(), "BAD-KEY") {
				t.Fatalf("bad env key: err = %v", err)
			}
			if len(ev.exits) != 0 {
				t.Fatalf("exit event sent for a refused exec: %v", ev.exits)
			}
		})
	}
	// A dead relay (the peer closed) is a clear error, not a hang or a fake exit.
	a, b := net.Pipe()
	b.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	var ev events
	err := Exec(ctx, conns(a), &pb.ExecSandboxRequest{Command: []string{"true"}}, ev.send)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "without an exit frame") {
		t.Fatalf("dead relay: err = %v", err)
	}
	if len(ev.exits) != 0 {
		t.Fatalf("exit event sent for a failed relay: %v", ev.exits)
	}
}

// TestExecCancelSignals: a client that goes away ends the command in the sandbox.
func TestExecCancelSignals(t *testing.T) {
	for _, kind := range supervisors {
		t.Run(kind, func(t *testing.T) {
			open, dir := opener(t, kind)
			pidFile := filepath.Join(dir, "pid")
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error, 1)
			var ev events
			go func() {
				done <- Exec(ctx, open, &pb.ExecSandboxRequest{Command: []string{"sh", "-c", "echo $$ > " + pidFile + "; exec sleep 60"}}, ev.send)
			}()
			var pid int
			deadline := time.Now().Add(10 * time.Second)
			for pid == 0 {
				b, _ := os.ReadFile(pidFile)
				pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
				if time.Now().After(deadline) {
					t.Fatal("the command did not start")
				}
				time.Sleep(20 * time.Millisecond)
			}
			cancel()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled exec returned %v", err)
			}
			for deadline := time.Now().Add(10 * time.Second); syscall.Kill(pid, 0) == nil; time.Sleep(50 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("the command (pid %d) outlived its cancelled exec", pid)
				}
			}
			if len(ev.exits) != 0 {
				t.Fatalf("exit event after cancel: %v", ev.exits)
			}
		})
	}
}

func TestInteractivePTYResize(t *testing.T) {
	for _, kind := range supervisors {
		t.Run(kind, func(t *testing.T) {
			open, _ := opener(t, kind)
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
				done <- Interactive(t.Context(), open, &pb.ExecSandboxRequest{Command: []string{"sh"}, Tty: true, Cols: 100, Rows: 30}, recv, ev.send)
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
			// A size of 0 (a terminal that reports none) is skipped; 65535 is clamped.
			in <- &pb.ExecSandboxInput{Payload: &pb.ExecSandboxInput_Resize{Resize: &pb.ExecSandboxWindowResize{Cols: 0, Rows: 0}}}
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
		})
	}
}

func TestInteractiveHalfCloseIsEOF(t *testing.T) {
	for _, kind := range supervisors {
		t.Run(kind, func(t *testing.T) {
			open, _ := opener(t, kind)
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
			if err := Interactive(t.Context(), open, &pb.ExecSandboxRequest{Command: []string{"cat"}, Stdin: []byte("0")}, recv, ev.send); err != nil {
				t.Fatal(err)
			}
			ev.check(t, 0)
			if ev.stdout.String() != "0abc" {
				t.Fatalf("cat echoed %q", ev.stdout.String())
			}
		})
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
