// Package reaper owns the exit statuses of the supervisor's children.
//
// The supervisor may be PID 1 (the container entrypoint, or the VM's init), so it must
// reap orphans that are re-parented to it. A naive wait4(-1) loop would steal the
// status of the main process or of an exec'd command from whoever waits for it. Here
// one loop is the only caller of wait: processes are started through Start, which
// registers the pid under the same lock the loop holds while reaping, so a status is
// always delivered to its owner and only unknown pids (orphans) are discarded.
//
// When the supervisor is not responsible for orphans (a test process, or a supervisor
// that is not PID 1), the reaper waits for each registered pid individually and never
// touches other children.
package reaper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// Reaper starts processes and delivers their exit statuses.
type Reaper struct {
	orphans bool

	mu      sync.Mutex
	waiters map[int]*Proc

	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// Proc is one started process.
type Proc struct {
	Pid    int
	cmd    *exec.Cmd
	done   chan struct{}
	status syscall.WaitStatus
}

// New returns a reaper. With reapOrphans it runs a central wait4(-1) loop (use it when
// the supervisor is PID 1 or a child subreaper); otherwise it waits per pid. Close it.
func New(reapOrphans bool) *Reaper {
	r := &Reaper{
		orphans: reapOrphans,
		waiters: map[int]*Proc{},
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	if reapOrphans {
		go r.loop()
	} else {
		close(r.done)
	}
	return r
}

// Start starts cmd. Its Stdin/Stdout/Stderr must be nil or *os.File: the reaper never
// calls cmd.Wait, so os/exec's copying goroutines would never be joined.
func (r *Reaper) Start(cmd *exec.Cmd) (*Proc, error) {
	for _, f := range []any{cmd.Stdin, cmd.Stdout, cmd.Stderr} {
		switch f.(type) {
		case nil, *os.File:
		default:
			return nil, fmt.Errorf("reaper: start %s: stdio must be *os.File or nil, got %T", cmd.Path, f)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Proc{Pid: cmd.Process.Pid, cmd: cmd, done: make(chan struct{})}
	if r.orphans {
		r.waiters[p.Pid] = p
		return p, nil
	}
	go func() {
		st, err := cmd.Process.Wait()
		if err != nil {
			// Cannot happen for our own child; report it as killed rather than hang.
			slog.Warn("reaper: wait failed", "pid", p.Pid, "err", err)
			p.finish(syscall.WaitStatus(uint32(syscall.SIGKILL)))
			return
		}
		p.finish(st.Sys().(syscall.WaitStatus))
	}()
	return p, nil
}

func (p *Proc) finish(st syscall.WaitStatus) {
	p.status = st
	close(p.done)
}

// Done is closed when the process has exited and been reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Status is the wait status; valid after Done is closed.
func (p *Proc) Status() syscall.WaitStatus { return p.status }

// Wait blocks until the process exits or ctx ends.
func (p *Proc) Wait(ctx context.Context) (syscall.WaitStatus, error) {
	select {
	case <-p.done:
		return p.status, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// Signal sends sig to the process if it has not been reaped yet.
func (p *Proc) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return os.ErrProcessDone
	default:
	}
	return p.cmd.Process.Signal(sig)
}

// SignalGroup sends sig to the process's group (a process started as the leader of
// its own session or group, so the group id is its pid) if it has not been reaped
// yet: what the program started (a shell's children) gets it too.
func (p *Proc) SignalGroup(sig syscall.Signal) error {
	select {
	case <-p.done:
		return os.ErrProcessDone
	default:
	}
	return syscall.Kill(-p.Pid, sig)
}

// ExitCode converts a wait status to a shell-style exit code (128+signo for signals).
func ExitCode(st syscall.WaitStatus) int {
	switch {
	case st.Exited():
		return st.ExitStatus()
	case st.Signaled():
		return 128 + int(st.Signal())
	}
	return -1
}

func (r *Reaper) loop() {
	defer close(r.done)
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGCHLD)
	defer signal.Stop(sigs)
	// The ticker covers SIGCHLDs coalesced or lost while the handler was being set up.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		r.reapAll()
		select {
		case <-r.stop:
			return
		case <-sigs:
		case <-tick.C:
		}
	}
}

func (r *Reaper) reapAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var st syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &st, syscall.WNOHANG, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		p, ok := r.waiters[pid]
		if !ok {
			slog.Debug("reaper: reaped orphan", "pid", pid, "exit", ExitCode(st))
			continue
		}
		delete(r.waiters, pid)
		_ = p.cmd.Process.Release()
		p.finish(st)
	}
}

// Close stops the central loop. Processes still running are not signalled.
func (r *Reaper) Close() error {
	r.once.Do(func() { close(r.stop) })
	<-r.done
	return nil
}
