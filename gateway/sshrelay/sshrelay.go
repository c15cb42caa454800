// Package sshrelay runs ExecSandbox and ExecSandboxInteractive on the gateway side:
// over an exec relay (the command's stdio framed on the relay itself, see exec.go),
// or, for a supervisor that predates exec relays, as an SSH client over a relay to
// the supervisor's built-in SSH server.
package sshrelay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/openshell/openshell/api/openshellv1"
)

// TimeoutExitCode is the exit code reported when timeout_seconds elapses.
const TimeoutExitCode = 124

var envKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Quote shell-quotes s for a POSIX shell.
func Quote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,+@%", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// BuildCommand renders argv, environment and workdir as one shell command line:
// `cd WORKDIR && K='v' 'argv0' 'arg1'…`. Every value is quoted, so nothing in the
// request is interpreted by the shell.
func BuildCommand(argv []string, env map[string]string, workdir string) (string, error) {
	if len(argv) == 0 {
		return "", errors.New("sshrelay: command is empty: give at least the program to run")
	}
	for i, a := range argv {
		if strings.IndexByte(a, 0) >= 0 {
			return "", fmt.Errorf("sshrelay: command[%d] contains a NUL byte", i)
		}
	}
	var b strings.Builder
	if workdir != "" {
		b.WriteString("cd " + Quote(workdir) + " && ")
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		if !envKey.MatchString(k) {
			return "", fmt.Errorf("sshrelay: environment key %q must match %s", k, envKey)
		}
		if strings.IndexByte(env[k], 0) >= 0 {
			return "", fmt.Errorf("sshrelay: environment value of %s contains a NUL byte", k)
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		b.WriteString(k + "=" + Quote(env[k]) + " ")
	}
	for i, a := range argv {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(Quote(a))
	}
	return b.String(), nil
}

// conn adapts a relay's io.ReadWriteCloser to net.Conn for the SSH client.
type conn struct{ io.ReadWriteCloser }

type relayAddr struct{}

func (relayAddr) Network() string { return "relay" }
func (relayAddr) String() string  { return "relay" }

func (conn) LocalAddr() net.Addr              { return relayAddr{} }
func (conn) RemoteAddr() net.Addr             { return relayAddr{} }
func (conn) SetDeadline(time.Time) error      { return nil }
func (conn) SetReadDeadline(time.Time) error  { return nil }
func (conn) SetWriteDeadline(time.Time) error { return nil }

// HostKeyed is a relay connection that knows the SSH host key its supervisor
// registered with the gateway when its session opened (the hub's relays do).
type HostKeyed interface {
	HostKey() ssh.PublicKey
}

// ErrHostKeyMismatch: the SSH server at the other end of a relay presented a host
// key other than the one its supervisor registered with the gateway.
var ErrHostKeyMismatch = errors.New("sandbox SSH host key does not match the key its supervisor registered")

// ErrNoHostKey: the relay's supervisor registered no SSH host key, so nothing it
// presents can be trusted.
var ErrNoHostKey = errors.New("the sandbox supervisor registered no SSH host key")

// PinnedHostKey is an ssh.HostKeyCallback that accepts only want. The errors name
// both fingerprints and wrap ErrHostKeyMismatch / ErrNoHostKey.
func PinnedHostKey(want ssh.PublicKey) ssh.HostKeyCallback {
	return func(_ string, _ net.Addr, got ssh.PublicKey) error {
		if want == nil {
			return fmt.Errorf("%w when its session opened; refusing to trust the key %s it now presents (restart the sandbox with a current openshell-sandbox)",
				ErrNoHostKey, ssh.FingerprintSHA256(got))
		}
		if !bytes.Equal(got.Marshal(), want.Marshal()) {
			return fmt.Errorf("%w: it presented %s, but the supervisor's session registered %s; refusing to talk to it (something other than the sandbox's supervisor answered the relay)",
				ErrHostKeyMismatch, ssh.FingerprintSHA256(got), ssh.FingerprintSHA256(want))
		}
		return nil
	}
}

// Dial starts an SSH client over a relay connection. The server must present the host
// key its supervisor registered with the gateway (rw's HostKey): the relay is opened
// by whoever answered on the sandbox's session, and only the bound supervisor's key
// proves it is the supervisor that booted.
func Dial(ctx context.Context, rw io.ReadWriteCloser) (*ssh.Client, error) {
	var want ssh.PublicKey
	if hk, ok := rw.(HostKeyed); ok {
		want = hk.HostKey()
	}
	nc, ok := rw.(net.Conn)
	if !ok {
		nc = conn{rw}
	}
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	sc, chans, reqs, err := ssh.NewClientConn(nc, "sandbox", &ssh.ClientConfig{
		User:              "sandbox",
		HostKeyCallback:   PinnedHostKey(want),
		HostKeyAlgorithms: hostKeyAlgorithms(want),
		Timeout:           10 * time.Second,
	})
	if err != nil {
		nc.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if errors.Is(err, ErrHostKeyMismatch) || errors.Is(err, ErrNoHostKey) {
			return nil, status.Errorf(codes.PermissionDenied, "ssh to the sandbox supervisor: %v", err)
		}
		return nil, status.Errorf(codes.Unavailable, "ssh handshake with the sandbox supervisor failed: %v", err)
	}
	return ssh.NewClient(sc, chans, reqs), nil
}

// hostKeyAlgorithms asks the server for the pinned key's algorithm, so a server
// holding several keys presents the one that can match (nil: the library default).
func hostKeyAlgorithms(want ssh.PublicKey) []string {
	if want == nil {
		return nil
	}
	if want.Type() == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	return []string{want.Type()}
}

// sink serialises events and guarantees that nothing follows the exit event.
type sink struct {
	mu     sync.Mutex
	send   func(*pb.ExecSandboxEvent) error
	exited bool
}

func (k *sink) write(stderr bool, p []byte) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.exited {
		return 0, io.ErrClosedPipe
	}
	for off := 0; off < len(p); {
		n := min(len(p)-off, 64<<10)
		data := bytes.Clone(p[off : off+n])
		var ev *pb.ExecSandboxEvent
		if stderr {
			ev = &pb.ExecSandboxEvent{Payload: &pb.ExecSandboxEvent_Stderr{Stderr: &pb.ExecSandboxStderr{Data: data}}}
		} else {
			ev = &pb.ExecSandboxEvent{Payload: &pb.ExecSandboxEvent_Stdout{Stdout: &pb.ExecSandboxStdout{Data: data}}}
		}
		if err := k.send(ev); err != nil {
			return off, err
		}
		off += n
	}
	return len(p), nil
}

func (k *sink) exit(code int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.exited {
		return nil
	}
	k.exited = true
	return k.send(exitEvent(code))
}

// stop ends the stream without an exit event: nothing is sent after it.
func (k *sink) stop() {
	k.mu.Lock()
	k.exited = true
	k.mu.Unlock()
}

type sinkWriter struct {
	k      *sink
	stderr bool
}

func (w sinkWriter) Write(p []byte) (int, error) { return w.k.write(w.stderr, p) }

func exitEvent(code int) *pb.ExecSandboxEvent {
	return &pb.ExecSandboxEvent{Payload: &pb.ExecSandboxEvent_Exit{Exit: &pb.ExecSandboxExit{ExitCode: int32(code)}}}
}

// waitCode converts a session's Wait error into an exit code.
func waitCode(err error) (int, error) {
	if err == nil {
		return 0, nil
	}
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		return ee.ExitStatus(), nil
	}
	var missing *ssh.ExitMissingError
	if errors.As(err, &missing) {
		return 0, status.Error(codes.Unavailable, "the command ended without an exit status (the sandbox connection was lost)")
	}
	return 0, status.Errorf(codes.Unavailable, "the sandbox connection was lost: %v", err)
}

func defaultSize(cols, rows uint32) (int, int) {
	if cols == 0 {
		cols = 80
	}
	if rows == 0 {
		rows = 24
	}
	return int(cols), int(rows)
}

// execSSH runs req as an SSH exec over conn, streaming stdout/stderr events and
// ending with exactly one exit event (124 when timeout_seconds elapses). When the
// exit status cannot be known it returns an error instead of an exit event.
func execSSH(ctx context.Context, conn io.ReadWriteCloser, req *pb.ExecSandboxRequest, send func(*pb.ExecSandboxEvent) error) error {
	cmd, err := BuildCommand(req.GetCommand(), req.GetEnvironment(), req.GetWorkdir())
	if err != nil {
		conn.Close()
		return status.Error(codes.InvalidArgument, err.Error())
	}
	client, err := Dial(ctx, conn)
	if err != nil {
		return err
	}
	defer client.Close()
	sess, err := client.NewSession()
	if err != nil {
		return status.Errorf(codes.Unavailable, "open ssh session in the sandbox: %v", err)
	}
	defer sess.Close()
	if req.GetTty() {
		cols, rows := defaultSize(req.GetCols(), req.GetRows())
		if err := sess.RequestPty("xterm-256color", rows, cols, ssh.TerminalModes{}); err != nil {
			return status.Errorf(codes.Unavailable, "request pty: %v", err)
		}
	}
	k := &sink{send: send}
	sess.Stdout = sinkWriter{k: k}
	sess.Stderr = sinkWriter{k: k, stderr: true}
	if len(req.GetStdin()) > 0 {
		sess.Stdin = bytes.NewReader(req.GetStdin())
	}
	if err := sess.Start(cmd); err != nil {
		return status.Errorf(codes.Unavailable, "start command in the sandbox: %v", err)
	}
	return awaitExit(ctx, sess, client, k, req.GetTimeoutSeconds(), nil, ssh.SIGKILL)
}

// interactiveSSH runs first as an SSH exec over conn and streams stdin and resize
// frames from recv into it (with a PTY when first.tty) until the command exits; it
// ends with one exit event. A client half-close sends EOF to the command's stdin.
func interactiveSSH(ctx context.Context, conn io.ReadWriteCloser, first *pb.ExecSandboxRequest,
	recv func() (*pb.ExecSandboxInput, error), send func(*pb.ExecSandboxEvent) error) error {
	cmd, err := BuildCommand(first.GetCommand(), first.GetEnvironment(), first.GetWorkdir())
	if err != nil {
		conn.Close()
		return status.Error(codes.InvalidArgument, err.Error())
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	client, err := Dial(ctx, conn)
	if err != nil {
		return err
	}
	defer client.Close()
	sess, err := client.NewSession()
	if err != nil {
		return status.Errorf(codes.Unavailable, "open ssh session in the sandbox: %v", err)
	}
	defer sess.Close()
	if first.GetTty() {
		cols, rows := defaultSize(first.GetCols(), first.GetRows())
		if err := sess.RequestPty("xterm-256color", rows, cols, ssh.TerminalModes{}); err != nil {
			return status.Errorf(codes.Unavailable, "request pty: %v", err)
		}
	}
	k := &sink{send: send}
	sess.Stdout = sinkWriter{k: k}
	sess.Stderr = sinkWriter{k: k, stderr: true}
	stdin, err := sess.StdinPipe()
	if err != nil {
		return status.Errorf(codes.Internal, "stdin pipe: %v", err)
	}
	if len(first.GetStdin()) > 0 {
		go func() { _, _ = stdin.Write(first.GetStdin()) }()
	}
	if err := sess.Start(cmd); err != nil {
		return status.Errorf(codes.Unavailable, "start command in the sandbox: %v", err)
	}
	recvErr := make(chan error, 1)
	go func() {
		for {
			in, err := recv()
			if err != nil {
				if errors.Is(err, io.EOF) {
					_ = stdin.Close()
					return
				}
				recvErr <- err
				return
			}
			switch p := in.GetPayload().(type) {
			case *pb.ExecSandboxInput_Stdin:
				if _, err := stdin.Write(p.Stdin); err != nil {
					return
				}
			case *pb.ExecSandboxInput_Resize:
				_ = sess.WindowChange(int(p.Resize.GetRows()), int(p.Resize.GetCols()))
			}
		}
	}()
	return awaitExit(ctx, sess, client, k, first.GetTimeoutSeconds(), recvErr, ssh.SIGHUP)
}

// awaitExit ends an exec with exactly one exit event: the command's status, or
// TimeoutExitCode once timeoutSeconds (0 = none) pass. A client stream error
// (recvErr, nil for none) or ctx ending sends cancelSig to the command instead.
func awaitExit(ctx context.Context, sess *ssh.Session, client *ssh.Client, k *sink, timeoutSeconds uint32, recvErr <-chan error, cancelSig ssh.Signal) error {
	waitErr := make(chan error, 1)
	go func() { waitErr <- sess.Wait() }()
	var timeout <-chan time.Time
	if timeoutSeconds > 0 {
		t := time.NewTimer(time.Duration(timeoutSeconds) * time.Second)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case err := <-waitErr:
		code, err := waitCode(err)
		if err != nil {
			return err
		}
		return k.exit(code)
	case <-timeout:
		_ = sess.Signal(ssh.SIGKILL)
		err := k.exit(TimeoutExitCode)
		client.Close()
		return err
	case err := <-recvErr:
		_ = sess.Signal(cancelSig)
		return err
	case <-ctx.Done():
		_ = sess.Signal(cancelSig)
		return ctx.Err()
	}
}
