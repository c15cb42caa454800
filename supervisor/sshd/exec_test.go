package sshd

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/internal/relayframe"
)

// execRun is one exec relay driven with raw frames, as the gateway drives it; a
// goroutine reads the supervisor's frames as they come (the pipe has no buffer).
type execRun struct {
	c      net.Conn
	w      *relayframe.Writer
	done   chan struct{} // ServeExec returned
	read   chan struct{} // the reader stopped
	stdout bytes.Buffer
	stderr bytes.Buffer
	kinds  []byte
	exit   *relayframe.ExitStatus
	err    error
}

func startExec(t *testing.T, srv *Server, target *pb.ExecRelayTarget) *execRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	c, sc := net.Pipe()
	r := &execRun{c: c, w: relayframe.NewWriter(c), done: make(chan struct{}), read: make(chan struct{})}
	go func() {
		defer close(r.done)
		srv.ServeExec(ctx, sc, target)
	}()
	go func() {
		defer close(r.read)
		rd := relayframe.NewReader(r.c)
		for {
			o, err := relayframe.ReadOutput(rd)
			if err != nil {
				r.err = err
				return
			}
			r.kinds = append(r.kinds, o.Kind)
			switch o.Kind {
			case relayframe.ExecStdout:
				r.stdout.Write(o.Data)
			case relayframe.ExecStderr:
				r.stderr.Write(o.Data)
			case relayframe.ExecExit:
				r.exit = o.Exit
				r.c.Close()
				return
			}
		}
	}()
	t.Cleanup(func() {
		c.Close()
		<-r.done
		cancel()
	})
	return r
}

// wait returns the exit frame (the output is then in stdout/stderr).
func (r *execRun) wait(t *testing.T) *relayframe.ExitStatus {
	t.Helper()
	select {
	case <-r.read:
	case <-time.After(30 * time.Second):
		t.Fatal("no exit frame within 30 s")
	}
	if r.exit == nil {
		t.Fatalf("read the exec relay: %v (stdout %q stderr %q)", r.err, r.stdout.String(), r.stderr.String())
	}
	return r.exit
}

// send writes frames without waiting for the supervisor to read them.
func (r *execRun) send(frames ...func(w *relayframe.Writer) error) {
	go func() {
		for _, f := range frames {
			if f(r.w) != nil {
				return
			}
		}
	}()
}

func frame(kind byte, p []byte) func(w *relayframe.Writer) error {
	return func(w *relayframe.Writer) error { return w.Frame(kind, p) }
}

func execServer(t *testing.T) (*Server, string, int) {
	srv, _, work, uid := transferServer(t)
	return srv, work, uid
}

// TestExecRelay runs commands on the real server over exec relays: exit codes,
// stdout and stderr apart, environment and working directory, the sandbox user,
// stdin up to its end, output larger than a frame, and the shell's codes for a
// command that cannot start.
func TestExecRelay(t *testing.T) {
	srv, work, uid := execServer(t)
	if err := os.Mkdir(filepath.Join(work, "sub dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Run("exit code, stderr apart, env, workdir, user", func(t *testing.T) {
		r := startExec(t, srv, &pb.ExecRelayTarget{
			Command:     []string{"sh", "-c", `printf '%s|%s|%s|%s' "$0" "$V" "$(pwd)" "$(id -u)"; echo err >&2; exit 3`, "a b"},
			Environment: map[string]string{"V": "x'y"}, Workdir: "sub dir"})
		r.send(frame(relayframe.ExecStdinEOF, nil))
		e := r.wait(t)
		if want := "a b|x'y|" + filepath.Join(work, "sub dir") + "|" + strconv.Itoa(uid); e.Code != 3 || r.stdout.String() != want || r.stderr.String() != "err\n" {
			t.Fatalf("exit %+v stdout %q (want %q) stderr %q", e, r.stdout.String(), want, r.stderr.String())
		}
		if r.kinds[0] != relayframe.ExecHello {
			t.Fatalf("first frame %q, want hello", r.kinds[0])
		}
	})
	t.Run("stdin until its end", func(t *testing.T) {
		r := startExec(t, srv, &pb.ExecRelayTarget{Command: []string{"wc", "-c"}})
		r.send(frame(relayframe.ExecStdin, bytes.Repeat([]byte("z"), 3<<20)), frame(relayframe.ExecStdin, []byte("12345")),
			frame(relayframe.ExecStdinEOF, nil))
		if e := r.wait(t); e.Code != 0 || strings.TrimSpace(r.stdout.String()) != strconv.Itoa(3<<20+5) {
			t.Fatalf("exit %+v stdout %q", e, r.stdout.String())
		}
	})
	t.Run("output larger than a frame", func(t *testing.T) {
		r := startExec(t, srv, &pb.ExecRelayTarget{Command: []string{"head", "-c", strconv.Itoa(3*relayframe.MaxFrame + 7), "/dev/zero"}})
		r.send(frame(relayframe.ExecStdinEOF, nil))
		if e := r.wait(t); e.Code != 0 || r.stdout.Len() != 3*relayframe.MaxFrame+7 {
			t.Fatalf("exit %+v, %d bytes of stdout", e, r.stdout.Len())
		}
	})
	t.Run("not found, not a directory", func(t *testing.T) {
		r := startExec(t, srv, &pb.ExecRelayTarget{Command: []string{"no-such-command"}})
		if e := r.wait(t); e.Code != 127 || !strings.Contains(r.stderr.String(), "no-such-command: command not found") {
			t.Fatalf("exit %+v stderr %q", e, r.stderr.String())
		}
		r = startExec(t, srv, &pb.ExecRelayTarget{Command: []string{"true"}, Workdir: "/no/such/dir"})
		if e := r.wait(t); e.Code != 1 || !strings.Contains(r.stderr.String(), "/no/such/dir: no such directory") {
			t.Fatalf("exit %+v stderr %q", e, r.stderr.String())
		}
	})
	t.Run("tty with resize", func(t *testing.T) {
		r := startExec(t, srv, &pb.ExecRelayTarget{Command: []string{"sh", "-c", "stty size; tty; read x; stty size"}, Tty: true, Cols: 100, Rows: 30})
		go func() {
			time.Sleep(300 * time.Millisecond)
			_ = relayframe.WriteWindow(r.w, 120, 40)
			time.Sleep(100 * time.Millisecond)
			_ = r.w.Frame(relayframe.ExecStdin, []byte("go\n"))
		}()
		e := r.wait(t)
		out := r.stdout.String()
		if e.Code != 0 || !strings.Contains(out, "30 100") || !strings.Contains(out, "/dev/pts/") || !strings.Contains(out, "40 120") {
			t.Fatalf("exit %+v tty output %q", e, out)
		}
	})
	t.Run("signal", func(t *testing.T) {
		r := startExec(t, srv, &pb.ExecRelayTarget{Command: []string{"sleep", "30"}})
		start := time.Now()
		go func() {
			time.Sleep(200 * time.Millisecond)
			_ = r.w.Frame(relayframe.ExecSignal, []byte("TERM"))
		}()
		if e := r.wait(t); e.Code != 128+int(syscall.SIGTERM) || e.Signal != "TERM" || time.Since(start) > 10*time.Second {
			t.Fatalf("exit %+v after %v", e, time.Since(start))
		}
	})
}

// TestExecRelayHangUp: a client that goes away without a word (the relay closes)
// hangs the command up, as a dropped SSH connection does.
func TestExecRelayHangUp(t *testing.T) {
	srv, work, _ := execServer(t)
	pidFile := filepath.Join(work, "pid")
	r := startExec(t, srv, &pb.ExecRelayTarget{Command: []string{"sh", "-c", "echo $$ > " + pidFile + "; exec sleep 60"}})
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
	r.c.Close()
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		t.Fatal("ServeExec did not end after the client went away")
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("the command (pid %d) outlived its relay: kill 0 = %v", pid, err)
	}
}

// TestExecRelayHostile: bad targets and malformed frames end the exec with an
// error naming what is wrong (in the exit frame); nothing panics and no command
// is left running.
func TestExecRelayHostile(t *testing.T) {
	srv, _, _ := execServer(t)
	for _, tc := range []struct {
		name   string
		target *pb.ExecRelayTarget
		want   string
	}{
		{"empty argv", &pb.ExecRelayTarget{}, "exec.command is empty"},
		{"NUL in argv", &pb.ExecRelayTarget{Command: []string{"echo", "a\x00b"}}, "exec.command[1] contains a NUL byte"},
		{"NUL in env", &pb.ExecRelayTarget{Command: []string{"true"}, Environment: map[string]string{"A": "x\x00"}}, "value of A contains a NUL"},
		{"bad env key", &pb.ExecRelayTarget{Command: []string{"true"}, Environment: map[string]string{"A=B": "x"}}, `key "A=B"`},
		{"tty 65535", &pb.ExecRelayTarget{Command: []string{"true"}, Tty: true, Cols: 65535, Rows: 10}, "1-4096"},
		{"tty 0 rows", &pb.ExecRelayTarget{Command: []string{"true"}, Tty: true, Cols: 80}, "1-4096"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startExec(t, srv, tc.target)
			if e := r.wait(t); !strings.Contains(e.Error, tc.want) {
				t.Fatalf("exit %+v, want an error naming %q", e, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		name  string
		frame []byte
		want  string
	}{
		{"huge length", relayframe.AppendHeader(nil, relayframe.ExecStdin, 0xfffffff0), "over the size limit"},
		{"unknown kind", relayframe.AppendHeader(nil, '?', 0), "unknown client frame kind"},
		{"resize to 0", append(relayframe.AppendHeader(nil, relayframe.ExecWindow, 4), 0, 0, 0, 0), "window 0x0"},
		{"resize to 65535", append(relayframe.AppendHeader(nil, relayframe.ExecWindow, 4), 0xff, 0xff, 0xff, 0xff), "window 65535x65535"},
		{"unknown signal", append(relayframe.AppendHeader(nil, relayframe.ExecSignal, 4), "SEGV"...), `"SEGV"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startExec(t, srv, &pb.ExecRelayTarget{Command: []string{"sleep", "30"}})
			start := time.Now()
			go func() { _, _ = r.c.Write(tc.frame) }()
			e := r.wait(t)
			if !strings.Contains(e.Error, tc.want) || e.Code == 0 || time.Since(start) > 10*time.Second {
				t.Fatalf("exit %+v after %v, want an error naming %q and the command ended", e, time.Since(start), tc.want)
			}
		})
	}
}
