package sshd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/internal/relayframe"
	"github.com/openshell/openshell/supervisor/reaper"
)

// An exec relay runs one command on the relay itself, without SSH: the SSH
// handshake's key exchange and signatures cost more than everything else in an
// exec, above all in a guest under software emulation. The command starts through
// Start, exactly as an SSH exec does (user, confinement, environment, PTY); only the
// framing differs (relayframe's exec frames).

// execDrainWait bounds how long a finished exec waits for the client to hang up.
const execDrainWait = 30 * time.Second

// maxQueuedStdin is how much stdin an exec relay buffers for a program that does
// not read it yet; beyond it the relay stops reading (window and signal frames
// behind it wait too).
const maxQueuedStdin = 8 << 20

var execEnvKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// ProgramOf checks an exec relay's target and turns it into a Program (stdio
// unset). The errors name the field.
func ProgramOf(t *pb.ExecRelayTarget) (Program, error) {
	var p Program
	argv := t.GetCommand()
	if len(argv) == 0 || argv[0] == "" {
		return p, errors.New("exec.command is empty: give at least the program to run")
	}
	for i, a := range argv {
		if strings.IndexByte(a, 0) >= 0 {
			return p, fmt.Errorf("exec.command[%d] contains a NUL byte", i)
		}
	}
	keys := make([]string, 0, len(t.GetEnvironment()))
	for k, v := range t.GetEnvironment() {
		if !execEnvKey.MatchString(k) {
			return p, fmt.Errorf("exec.environment key %q must match %s", k, execEnvKey)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return p, fmt.Errorf("exec.environment value of %s contains a NUL byte", k)
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		p.Env = append(p.Env, k+"="+t.GetEnvironment()[k])
	}
	if strings.IndexByte(t.GetWorkdir(), 0) >= 0 {
		return p, errors.New("exec.workdir contains a NUL byte")
	}
	if t.GetTty() {
		cols, rows := t.GetCols(), t.GetRows()
		if cols == 0 && rows == 0 {
			cols, rows = 80, 24
		}
		if err := relayframe.CheckWindow(cols, rows); err != nil {
			return p, fmt.Errorf("exec.cols/rows: %w", err)
		}
		p.TTY, p.Term = &Winsize{Cols: uint16(cols), Rows: uint16(rows)}, "xterm-256color"
	}
	p.Argv, p.Dir = argv, t.GetWorkdir()
	return p, nil
}

// ServeExec serves one exec relay on c and closes c: a hello frame, the command's
// output, and one exit frame. A bad target or a malformed client frame is reported
// in the exit frame's error.
func (s *Server) ServeExec(ctx context.Context, c net.Conn, t *pb.ExecRelayTarget) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	w := relayframe.NewWriter(c)
	if err := w.Frame(relayframe.ExecHello, nil); err != nil {
		return
	}
	readerDone := make(chan struct{})
	e := s.runExec(ctx, c, w, t, readerDone)
	if err := relayframe.WriteExit(w, e); err != nil {
		return
	}
	// Let the exit frame leave, then leave the end of the relay to the client: a
	// relay that ends on this side first can be torn down before the frame arrives.
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	timer := time.NewTimer(execDrainWait)
	defer timer.Stop()
	select {
	case <-readerDone:
	case <-timer.C:
	case <-ctx.Done():
	}
}

// runExec runs the target's command until it ends; the goroutine reading the
// client's frames closes readerDone when the client's stream ends.
func (s *Server) runExec(ctx context.Context, c net.Conn, w *relayframe.Writer, t *pb.ExecRelayTarget, readerDone chan struct{}) relayframe.ExitStatus {
	p, err := ProgramOf(t)
	if err != nil {
		close(readerDone)
		return relayframe.ExitStatus{Code: 255, Error: err.Error()}
	}
	stdin := newInputQueue(maxQueuedStdin)
	p.Stdin = stdin
	p.Stdout = relayframe.KindWriter{W: w, Kind: relayframe.ExecStdout}
	p.Stderr = relayframe.KindWriter{W: w, Kind: relayframe.ExecStderr}
	if p.TTY != nil {
		p.Stderr = p.Stdout
	}
	// Reasons a command cannot start are told as a shell would: on stderr, with the
	// shell's exit codes (1: no such directory, 126: not executable, 127: not found).
	fail := func(code int, format string, args ...any) relayframe.ExitStatus {
		_ = w.Frame(relayframe.ExecStderr, fmt.Appendf(nil, "openshell: "+format+"\n", args...))
		go drainInputs(c, readerDone)
		return relayframe.ExitStatus{Code: code}
	}
	if dir := s.Dir(p.Dir); dir != "" {
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			return fail(1, "cd: %s: no such directory", dir)
		}
	}
	if _, err := s.LookPath(p); err != nil {
		if errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EISDIR) {
			return fail(126, "%s: cannot run: %v", p.Argv[0], err)
		}
		return fail(127, "%s: command not found (%v)", p.Argv[0], err)
	}
	began := time.Now()
	r, err := s.Start(ctx, p)
	if err != nil {
		return fail(126, "%s: cannot run: %v", p.Argv[0], err)
	}
	spawned := time.Since(began)
	exitedAt := make(chan time.Duration, 1)
	go func() {
		<-r.Proc.Done()
		exitedAt <- time.Since(began)
	}()
	var protoErr error
	var mu sync.Mutex
	go func() {
		defer close(readerDone)
		rd := relayframe.NewReader(c)
		exited := false
		for {
			in, err := relayframe.ReadInput(rd)
			if err != nil {
				stdin.abort()
				if !exited {
					if !errors.Is(err, io.EOF) && errors.Is(err, relayframe.ErrProtocol) && !isClosed(err) {
						mu.Lock()
						protoErr = err
						mu.Unlock()
					}
					// The client went away (or broke the protocol): hang the program up
					// as a dropped SSH connection would.
					r.HangUp()
				}
				return
			}
			select {
			case <-r.Done():
				exited = true
				continue // the exit frame is on its way; only wait for the hang-up
			default:
			}
			switch in.Kind {
			case relayframe.ExecStdin:
				stdin.push(in.Data)
			case relayframe.ExecStdinEOF:
				stdin.close()
			case relayframe.ExecWindow:
				_ = r.Resize(in.Cols, in.Rows)
			case relayframe.ExecSignal:
				if err := r.Signal(unix.SignalNum("SIG" + in.Signal)); err != nil {
					slog.Debug("exec relay: signal", "signal", in.Signal, "err", err)
				}
			}
		}
	}()
	<-r.Done()
	st := r.Status()
	e := relayframe.ExitStatus{Code: reaper.ExitCode(st)}
	if e.Code < 0 || e.Code > 255 {
		e.Code = 255
	}
	// One line per exec (the program's name only: arguments may carry secrets),
	// with where its time went: starting it (handing it to a spare confinement
	// helper, or starting a helper of its own when none was ready), until it
	// exited (confinement and the program's exec included), and until its output
	// was passed on.
	exited := <-exitedAt
	slog.Info("exec relay: command ended", "program", p.Argv[0], "pid", r.Proc.Pid, "exit_code", e.Code, "tty", p.TTY != nil,
		"spawn_us", spawned.Microseconds(), "exit_us", (exited - spawned).Microseconds(), "drain_us", (time.Since(began) - exited).Microseconds())
	if st.Signaled() {
		e.Signal = strings.TrimPrefix(unix.SignalName(st.Signal()), "SIG")
	}
	mu.Lock()
	if protoErr != nil {
		e.Error = protoErr.Error()
	}
	mu.Unlock()
	return e
}

// isClosed: the relay itself ended (not a malformed frame).
func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, context.Canceled)
}

// drainInputs reads (and drops) the client's frames until its stream ends.
func drainInputs(c io.Reader, done chan struct{}) {
	defer close(done)
	_, _ = io.Copy(io.Discard, c)
}

// inputQueue passes stdin from the frame reader to the program without blocking
// the reader (window and signal frames must not wait behind stdin the program does
// not read), up to max bytes.
type inputQueue struct {
	mu     sync.Mutex
	cond   sync.Cond
	bufs   [][]byte
	n, max int
	eof    bool // no more input after bufs
	gone   bool // the client went away: drop bufs
}

func newInputQueue(max int) *inputQueue {
	q := &inputQueue{max: max}
	q.cond.L = &q.mu
	return q
}

// push queues a copy of p, waiting while max bytes are queued.
func (q *inputQueue) push(p []byte) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.n >= q.max && !q.gone {
		q.cond.Wait()
	}
	if q.gone || q.eof {
		return
	}
	q.bufs = append(q.bufs, append([]byte(nil), p...))
	q.n += len(p)
	q.cond.Broadcast()
}

func (q *inputQueue) close() {
	q.mu.Lock()
	q.eof = true
	q.mu.Unlock()
	q.cond.Broadcast()
}

func (q *inputQueue) abort() {
	q.mu.Lock()
	q.gone, q.bufs, q.n = true, nil, 0
	q.mu.Unlock()
	q.cond.Broadcast()
}

func (q *inputQueue) Read(p []byte) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.bufs) == 0 && !q.eof && !q.gone {
		q.cond.Wait()
	}
	if len(q.bufs) == 0 {
		return 0, io.EOF
	}
	n := copy(p, q.bufs[0])
	if n == len(q.bufs[0]) {
		q.bufs = q.bufs[1:]
	} else {
		q.bufs[0] = q.bufs[0][n:]
	}
	q.n -= n
	q.cond.Broadcast()
	return n, nil
}
