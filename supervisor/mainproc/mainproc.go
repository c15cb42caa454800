// Package mainproc runs the sandbox's main process: the agent's argv exec'd directly
// (never re-parsed by a shell), as the sandbox user, with a PTY when asked. Its output
// goes to a replay buffer and attached clients (the "openshell-main" SSH attach) and,
// line by line, to the log shipper.
package mainproc

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/creack/pty"

	"github.com/openshell/openshell/supervisor/confine"
	"github.com/openshell/openshell/supervisor/reaper"
)

// DefaultReplayBytes is how much PTY output a late attach replays.
const DefaultReplayBytes = 64 << 10

// Options describe the main process.
type Options struct {
	Argv       []string
	TTY        bool
	Env        []string // complete environment
	Dir        string
	Cred       *syscall.Credential // nil = run as the supervisor's user
	Cols, Rows uint16              // initial PTY size; 0 = 80x24
	// ReplayBytes is the replay buffer size; 0 = DefaultReplayBytes.
	ReplayBytes int
	// OnLine receives each output line; stream is "stdout", "stderr" or "tty".
	OnLine func(stream, line string)
	// Start starts the prepared command (Path, Args, Env, Dir, stdio, SysProcAttr
	// with Cred) and registers it with the reaper; the supervisor uses it to run the
	// program through its confinement helper and inside the sandbox's network
	// namespace. nil = r.Start(cmd).
	Start func(cmd *exec.Cmd) (*reaper.Proc, error)
}

// Validate names the first bad field.
func (o *Options) Validate() error {
	if len(o.Argv) == 0 || o.Argv[0] == "" {
		return errors.New("mainproc: Argv is empty: give the main process command")
	}
	return nil
}

// DefaultArgv is the main process when the spec has no command: a login bash, or a
// login sh when the image has no bash. exists reports whether a path exists in the
// sandbox's root.
func DefaultArgv(exists func(string) bool) []string {
	if exists("/bin/bash") {
		return []string{"/bin/bash", "-l"}
	}
	return []string{"/bin/sh", "-l"}
}

// LookPath resolves argv0 against the PATH in env (the child's PATH, not ours) and
// checks that the program can be executed, so a command that cannot start fails here
// with the reason (a *StartError) rather than as an exit code from the confinement
// helper that would have exec'd it.
func LookPath(argv0 string, env []string) (string, error) {
	p, err := confine.LookPath(argv0, env)
	if err != nil {
		return "", &StartError{Path: argv0, Err: fmt.Errorf("%w: use an absolute path or fix the image's PATH", err)}
	}
	if !filepath.IsAbs(p) {
		return p, nil // relative to the process's working directory: exec resolves it
	}
	fi, err := os.Stat(p)
	switch {
	case err != nil:
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return "", &StartError{Path: p, Err: err}
	case fi.IsDir():
		return "", &StartError{Path: p, Err: syscall.EISDIR}
	case fi.Mode()&0o111 == 0:
		return "", &StartError{Path: p, Err: syscall.EACCES}
	}
	return p, nil
}

// StartError says why the main process could not start, in exec's words:
// "exec /bin/bash: no such file or directory".
type StartError struct {
	Path string
	Err  error
}

func (e *StartError) Error() string { return "exec " + e.Path + ": " + e.Err.Error() }
func (e *StartError) Unwrap() error { return e.Err }

// Main is the running main process.
type Main struct {
	proc   *reaper.Proc
	tty    *os.File // PTY master; nil without a TTY
	out    *broadcaster
	done   chan struct{}
	code   int
	wmu    sync.Mutex // guards writes to, resizes and the closing of the PTY
	closed bool
	start  time.Time
}

// Start launches the main process.
func Start(r *reaper.Reaper, o Options) (_ *Main, retErr error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	path, err := LookPath(o.Argv[0], o.Env)
	if err != nil {
		return nil, err
	}
	cmd := &exec.Cmd{Path: path, Args: o.Argv, Env: o.Env, Dir: o.Dir,
		SysProcAttr: &syscall.SysProcAttr{Credential: o.Cred, Setsid: true}}
	replay := o.ReplayBytes
	if replay <= 0 {
		replay = DefaultReplayBytes
	}
	m := &Main{out: newBroadcaster(replay), done: make(chan struct{}), start: time.Now()}
	onLine := o.OnLine
	if onLine == nil {
		onLine = func(string, string) {}
	}

	var readers []*os.File
	var streams []string
	var closeAfterStart []*os.File
	defer func() {
		for _, f := range closeAfterStart {
			f.Close()
		}
		if retErr != nil {
			for _, f := range readers {
				f.Close()
			}
		}
	}()
	if o.TTY {
		master, slave, err := pty.Open()
		if err != nil {
			return nil, fmt.Errorf("mainproc: open pty: %w", err)
		}
		cols, rows := o.Cols, o.Rows
		if cols == 0 || rows == 0 {
			cols, rows = 80, 24
		}
		_ = pty.Setsize(master, &pty.Winsize{Cols: cols, Rows: rows})
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		cmd.SysProcAttr.Setctty = true
		cmd.SysProcAttr.Ctty = 0
		m.tty = master
		readers, streams = []*os.File{master}, []string{"tty"}
		closeAfterStart = append(closeAfterStart, slave)
	} else {
		devnull, err := os.Open(os.DevNull)
		if err != nil {
			return nil, fmt.Errorf("mainproc: open %s: %w", os.DevNull, err)
		}
		closeAfterStart = append(closeAfterStart, devnull)
		cmd.Stdin = devnull
		for _, name := range []string{"stdout", "stderr"} {
			pr, pw, err := os.Pipe()
			if err != nil {
				return nil, fmt.Errorf("mainproc: pipe: %w", err)
			}
			readers, streams = append(readers, pr), append(streams, name)
			closeAfterStart = append(closeAfterStart, pw)
			if name == "stdout" {
				cmd.Stdout = pw
			} else {
				cmd.Stderr = pw
			}
		}
	}
	start := r.Start
	if o.Start != nil {
		start = o.Start
	}
	p, err := start(cmd)
	if err != nil {
		return nil, fmt.Errorf("mainproc: start %q: %w", o.Argv[0], err)
	}
	m.proc = p

	var progress atomic.Int64
	var wg sync.WaitGroup
	var outMu sync.Mutex // keeps stdout and stderr chunks whole in the replay buffer
	for i, f := range readers {
		wg.Add(1)
		ls := &lineSplitter{emit: func(line string) { onLine(streams[i], line) }}
		go func() {
			defer wg.Done()
			buf := make([]byte, 32<<10)
			for {
				n, err := f.Read(buf)
				if n > 0 {
					progress.Add(int64(n))
					outMu.Lock()
					m.out.write(buf[:n])
					ls.write(buf[:n])
					outMu.Unlock()
				}
				if err != nil {
					outMu.Lock()
					ls.flush()
					outMu.Unlock()
					return
				}
			}
		}()
	}
	readersDone := make(chan struct{})
	go func() { wg.Wait(); close(readersDone) }()
	go func() {
		<-p.Done()
		DrainAfterExit(readersDone, &progress, func() {
			for _, f := range readers {
				_ = f.SetReadDeadline(time.Now())
			}
		})
		if m.tty != nil {
			_ = m.tty.SetWriteDeadline(time.Now()) // unblock a Write stuck on a full PTY
		}
		m.wmu.Lock() // Write and Resize must not use the PTY while it is closed
		for _, f := range readers {
			f.Close()
		}
		m.closed = true
		m.wmu.Unlock()
		m.code = reaper.ExitCode(p.Status())
		// Done before the live channels close: a client that sees its channel
		// closed tells an ended process from its own drop by looking at Done.
		close(m.done)
		m.out.close()
	}()
	return m, nil
}

// DrainAfterExit waits, once a process has exited, for its output readers to finish:
// until they are done, or until no byte has arrived for 300 ms (a background child
// still holding the pipe or PTY must not keep the exit from being reported). stop
// unblocks the readers.
func DrainAfterExit(done <-chan struct{}, progress *atomic.Int64, stop func()) {
	last := progress.Load()
	t := time.NewTicker(300 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			if cur := progress.Load(); cur != last {
				last = cur
				continue
			}
			stop()
			<-done
			return
		}
	}
}

// Pid is the main process's pid.
func (m *Main) Pid() int { return m.proc.Pid }

// TTY reports whether the main process has a PTY.
func (m *Main) TTY() bool { return m.tty != nil }

// Done is closed after the process exited and its output was drained.
func (m *Main) Done() <-chan struct{} { return m.done }

// ExitCode is the exit code (128+signo for a signal); valid after Done.
func (m *Main) ExitCode() int { return m.code }

// Attach returns the replay buffer and a channel of live output, closed when the
// process ends or the client falls too far behind; call detach when done.
func (m *Main) Attach() (replay []byte, live <-chan []byte, detach func()) {
	return m.out.subscribe()
}

// Write sends input to the main process's PTY.
func (m *Main) Write(p []byte) (int, error) {
	if m.tty == nil {
		return 0, errors.New("mainproc: the main process has no TTY: its input is closed")
	}
	select {
	case <-m.done:
		return 0, io.ErrClosedPipe
	default:
	}
	m.wmu.Lock()
	defer m.wmu.Unlock()
	if m.closed {
		return 0, io.ErrClosedPipe
	}
	return m.tty.Write(p)
}

// Resize sets the PTY window size.
func (m *Main) Resize(cols, rows uint16) error {
	if m.tty == nil {
		return nil
	}
	m.wmu.Lock()
	defer m.wmu.Unlock()
	if m.closed {
		return nil
	}
	return pty.Setsize(m.tty, &pty.Winsize{Cols: cols, Rows: rows})
}

// Signal signals the main process.
func (m *Main) Signal(sig syscall.Signal) error { return m.proc.Signal(sig) }

// SignalGroup signals the main process's group (it leads its own session): the
// programs it started get the signal too, unless they left the group.
func (m *Main) SignalGroup(sig syscall.Signal) error { return m.proc.SignalGroup(sig) }
