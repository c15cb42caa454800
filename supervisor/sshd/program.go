package sshd

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/creack/pty"

	"github.com/openshell/openshell/supervisor/mainproc"
	"github.com/openshell/openshell/supervisor/reaper"
)

// Program is a command a session runs: an SSH channel's exec or shell, or an exec
// relay's command. Both start here, so both get the same user, confinement
// (Config.Start), environment and PTY handling.
type Program struct {
	Argv []string
	// Env is added to Config.Env (a later entry for a name wins).
	Env []string
	// Dir is the working directory: "" = Config.Dir; a relative path is taken
	// from Config.Dir.
	Dir string
	// TTY runs the program on a new PTY of that size (0 = 80x24) with TERM=Term;
	// nil = pipes.
	TTY  *Winsize
	Term string
	// Stdin is copied to the program's input (nil = none: it reads EOF). Without a
	// TTY the program's input closes when Stdin ends.
	Stdin io.Reader
	// Stdout and Stderr receive its output; with a TTY both streams go to Stdout.
	Stdout, Stderr io.Writer
}

// Winsize is a terminal size.
type Winsize struct{ Cols, Rows uint16 }

// Running is a started Program.
type Running struct {
	Proc *reaper.Proc
	done chan struct{}

	mu     sync.Mutex
	master *os.File // PTY master while the program runs
}

// Done is closed once the program has exited and its output has been copied.
func (r *Running) Done() <-chan struct{} { return r.done }

// Status is the program's wait status once Done is closed.
func (r *Running) Status() syscall.WaitStatus { return r.Proc.Status() }

// Resize sets the PTY's size; a program without one (or one that ended) ignores it.
func (r *Running) Resize(cols, rows uint16) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.master == nil {
		return nil
	}
	return pty.Setsize(r.master, &pty.Winsize{Cols: cols, Rows: rows})
}

// Signal sends sig to the program (not its process group), as an SSH "signal"
// request does.
func (r *Running) Signal(sig syscall.Signal) error { return r.Proc.Signal(sig) }

// HangUp ends a program whose client went away: SIGHUP to its process group, as
// a terminal hang-up would, then SIGKILL if it is still there after two seconds.
func (r *Running) HangUp() {
	select {
	case <-r.Proc.Done(): // already reaped: its pid may belong to someone else now
		return
	default:
	}
	_ = syscall.Kill(-r.Proc.Pid, syscall.SIGHUP)
	select {
	case <-r.done:
	case <-time.After(2 * time.Second):
		select {
		case <-r.Proc.Done():
		default:
			_ = syscall.Kill(-r.Proc.Pid, syscall.SIGKILL)
		}
	}
}

// Environ is the environment a Program with env and term runs with.
func (s *Server) Environ(term string, env []string) []string {
	out := append([]string(nil), s.cfg.Env...)
	if term != "" {
		out = append(out, "TERM="+term)
	}
	return append(out, env...)
}

// Dir is the working directory a Program with dir runs in.
func (s *Server) Dir(dir string) string {
	switch {
	case dir == "":
		return s.cfg.Dir
	case filepath.IsAbs(dir) || s.cfg.Dir == "":
		return dir
	}
	return filepath.Join(s.cfg.Dir, dir)
}

// LookPath finds argv0 as p would run it (the PATH of its environment).
func (s *Server) LookPath(p Program) (string, error) {
	return mainproc.LookPath(p.Argv[0], s.Environ(p.Term, p.Env))
}

// Start starts p as the sandbox user, in its own session, confined by
// Config.Start. When ctx ends the program is killed.
func (s *Server) Start(ctx context.Context, p Program) (_ *Running, retErr error) {
	cfg := &s.cfg
	if len(p.Argv) == 0 {
		return nil, fmt.Errorf("sshd: no program to run")
	}
	term := ""
	if p.TTY != nil {
		term = p.Term
	}
	env := s.Environ(term, p.Env)
	path, err := mainproc.LookPath(p.Argv[0], env)
	if err != nil {
		return nil, err
	}
	cmd := &exec.Cmd{Path: path, Args: p.Argv, Env: env, Dir: s.Dir(p.Dir),
		SysProcAttr: &syscall.SysProcAttr{Credential: cfg.User.Credential(), Setsid: true}}
	startProc := cfg.Reaper.Start
	if cfg.Start != nil {
		startProc = cfg.Start
	}
	var toClose []*os.File
	defer func() {
		for _, f := range toClose {
			f.Close()
		}
	}()
	r := &Running{done: make(chan struct{})}
	var progress atomic.Int64
	var copies sync.WaitGroup
	var readers []*os.File
	copyOut := func(dst io.Writer, src *os.File) {
		readers = append(readers, src)
		copies.Add(1)
		go func() {
			defer copies.Done()
			_, _ = io.CopyBuffer(dst, &countingReader{src, &progress}, make([]byte, copyBuf))
		}()
	}
	if p.TTY != nil {
		master, slave, err := pty.Open()
		if err != nil {
			return nil, fmt.Errorf("open pty: %w", err)
		}
		cols, rows := p.TTY.Cols, p.TTY.Rows
		if cols == 0 || rows == 0 {
			cols, rows = 80, 24
		}
		_ = pty.Setsize(master, &pty.Winsize{Cols: cols, Rows: rows})
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		cmd.SysProcAttr.Setctty = true
		toClose = append(toClose, slave)
		defer func() {
			if retErr != nil {
				master.Close()
			}
		}()
		proc, err := startProc(cmd)
		if err != nil {
			return nil, fmt.Errorf("start %s: %w", p.Argv[0], err)
		}
		r.Proc, r.master = proc, master
		if p.Stdin != nil {
			go func() { _, _ = io.Copy(master, p.Stdin) }()
		}
		copyOut(p.Stdout, master)
	} else {
		inR, inW, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		outR, outW, err := os.Pipe()
		if err != nil {
			inR.Close()
			inW.Close()
			return nil, err
		}
		errR, errW, err := os.Pipe()
		if err != nil {
			inR.Close()
			inW.Close()
			outR.Close()
			outW.Close()
			return nil, err
		}
		// Bulk transfers (SFTP) move through these pipes: 1 MiB pipes and 256 KiB
		// copies take a tenth of the system calls and wake-ups of the 64 KiB/32 KiB
		// defaults. Best effort: a smaller pipe only costs speed.
		growPipe(inW)
		growPipe(outR)
		toClose = append(toClose, inR, outW, errW)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
		proc, err := startProc(cmd)
		if err != nil {
			inW.Close()
			outR.Close()
			errR.Close()
			return nil, fmt.Errorf("start %s: %w", p.Argv[0], err)
		}
		r.Proc = proc
		go func() {
			if p.Stdin != nil {
				// struct{io.Writer} hides (*os.File).ReadFrom, which would copy 32 KiB at a time.
				_, _ = io.CopyBuffer(struct{ io.Writer }{inW}, p.Stdin, make([]byte, copyBuf))
			}
			inW.Close()
		}()
		copyOut(p.Stdout, outR)
		copyOut(p.Stderr, errR)
	}
	proc := r.Proc
	go func() {
		select {
		case <-proc.Done():
		case <-ctx.Done():
			// The whole group: killing only the program could leave what it started
			// (a shell's child) running, and once the program is reaped HangUp no
			// longer signals its group.
			_ = proc.SignalGroup(syscall.SIGKILL)
			<-proc.Done()
		}
		copiesDone := make(chan struct{})
		go func() { copies.Wait(); close(copiesDone) }()
		mainproc.DrainAfterExit(copiesDone, &progress, func() {
			for _, f := range readers {
				_ = f.SetReadDeadline(time.Now())
			}
		})
		// Under the lock: a resize must not use the PTY while it is closed.
		r.mu.Lock()
		r.master = nil
		for _, f := range readers {
			f.Close()
		}
		r.mu.Unlock()
		close(r.done)
	}()
	return r, nil
}
