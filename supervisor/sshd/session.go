package sshd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/creack/pty"
	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/supervisor/mainproc"
	"github.com/openshell/openshell/supervisor/reaper"
)

type ptyReq struct {
	Term       string
	Cols, Rows uint32
	W, H       uint32
	Modes      string
}

type winReq struct {
	Cols, Rows uint32
	W, H       uint32
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// session is one "session" channel: at most one program (exec, shell, subsystem).
type session struct {
	srv *Server
	ch  ssh.Channel

	mu      sync.Mutex
	env     []string
	pty     *ptyReq
	started bool
	master  *os.File      // PTY master of the running program
	proc    *reaper.Proc  // running program
	main    MainTarget    // set when attached to the main process
	done    chan struct{} // closed when the program finished
	closed  chan struct{} // closed when the channel's requests ended
}

// hangUp ends a program whose channel went away: SIGHUP to its process group, as a
// terminal hang-up would, then SIGKILL if it is still there after two seconds.
func (s *session) hangUp(p *reaper.Proc) {
	if p == nil {
		return
	}
	select {
	case <-p.Done(): // already reaped: its pid may belong to someone else now
		return
	default:
	}
	_ = syscall.Kill(-p.Pid, syscall.SIGHUP)
	select {
	case <-s.done:
	case <-time.After(2 * time.Second):
		_ = syscall.Kill(-p.Pid, syscall.SIGKILL)
	}
}

func (s *session) serve(ctx context.Context, reqs <-chan *ssh.Request) {
	s.done = make(chan struct{})
	s.closed = make(chan struct{})
	defer func() {
		// The client closed the channel (or the program finished and we closed it).
		close(s.closed)
		s.mu.Lock()
		started, proc := s.started, s.proc
		s.mu.Unlock()
		if started {
			s.hangUp(proc)
			<-s.done
		}
		s.ch.Close()
	}()
	for req := range reqs {
		ok, err := s.handle(ctx, req)
		if err != nil {
			slog.Debug("sshd: request failed", "type", req.Type, "err", err)
			if req.WantReply {
				_ = req.Reply(false, []byte(err.Error()))
			}
			continue
		}
		if req.WantReply {
			_ = req.Reply(ok, nil)
		}
	}
}

func (s *session) handle(ctx context.Context, req *ssh.Request) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch req.Type {
	case "env":
		var kv struct{ Name, Value string }
		if err := ssh.Unmarshal(req.Payload, &kv); err != nil {
			return false, err
		}
		if !envName.MatchString(kv.Name) {
			return false, fmt.Errorf("bad env name %q", kv.Name)
		}
		s.env = append(s.env, kv.Name+"="+kv.Value)
		return true, nil
	case "pty-req":
		var p ptyReq
		if err := ssh.Unmarshal(req.Payload, &p); err != nil {
			return false, err
		}
		s.pty = &p
		return true, nil
	case "window-change":
		var w winReq
		if err := ssh.Unmarshal(req.Payload, &w); err != nil {
			return false, err
		}
		if s.pty != nil {
			s.pty.Cols, s.pty.Rows = w.Cols, w.Rows
		}
		switch {
		case s.master != nil:
			_ = pty.Setsize(s.master, &pty.Winsize{Cols: uint16(w.Cols), Rows: uint16(w.Rows)})
		case s.main != nil:
			_ = s.main.Resize(uint16(w.Cols), uint16(w.Rows))
		}
		return true, nil
	case "signal":
		var sig struct{ Name string }
		if err := ssh.Unmarshal(req.Payload, &sig); err != nil {
			return false, err
		}
		n := unix.SignalNum("SIG" + sig.Name)
		if n == 0 || s.proc == nil {
			return false, fmt.Errorf("cannot deliver signal %q", sig.Name)
		}
		return true, s.proc.Signal(n)
	case "shell", "exec", "subsystem":
		if s.started {
			return false, errors.New("a program already runs on this channel")
		}
		var what string
		if req.Type != "shell" {
			var p struct{ Value string }
			if err := ssh.Unmarshal(req.Payload, &p); err != nil {
				return false, err
			}
			what = p.Value
		}
		if err := s.start(ctx, req.Type, what); err != nil {
			return false, err
		}
		s.started = true
		return true, nil
	}
	return false, nil
}

// start launches the requested program; called with s.mu held.
func (s *session) start(ctx context.Context, kind, what string) error {
	cfg := &s.srv.cfg
	switch {
	case (kind == "exec" || kind == "subsystem") && what == MainName:
		return s.attachMain(ctx)
	case kind == "subsystem" && what == "sftp":
		if cfg.SFTPArgv == nil {
			go s.serveSFTPInProcess()
			return nil
		}
		return s.run(ctx, cfg.SFTPArgv, false)
	case kind == "subsystem":
		return fmt.Errorf("unknown subsystem %q", what)
	case kind == "shell":
		return s.run(ctx, []string{cfg.Shell, "-l"}, s.pty != nil)
	default:
		return s.run(ctx, []string{cfg.Shell, "-c", what}, s.pty != nil)
	}
}

func (s *session) environ() []string {
	env := append([]string(nil), s.srv.cfg.Env...)
	if s.pty != nil && s.pty.Term != "" {
		env = append(env, "TERM="+s.pty.Term)
	}
	return append(env, s.env...)
}

func (s *session) serveSFTPInProcess() {
	defer close(s.done)
	opts := []sftp.ServerOption{}
	if s.srv.cfg.Dir != "" {
		opts = append(opts, sftp.WithServerWorkingDirectory(s.srv.cfg.Dir))
	}
	code := 0
	if err := ServeSFTP(s.ch, opts...); err != nil {
		slog.Debug("sshd: sftp ended", "err", err)
		code = 1
	}
	s.finish(syscall.WaitStatus(code << 8))
}

// ServeSFTP serves the SFTP protocol on rw until the client closes it. The
// "openshell-sandbox sftp-server" command calls it on stdin/stdout as the sandbox user.
func ServeSFTP(rw io.ReadWriter, opts ...sftp.ServerOption) error {
	opts = append([]sftp.ServerOption{sftp.WithMaxTxPacket(256 << 10)}, opts...)
	srv, err := sftp.NewServer(struct {
		io.Reader
		io.Writer
		io.Closer
	}{rw, rw, io.NopCloser(nil)}, opts...)
	if err != nil {
		return fmt.Errorf("sshd: sftp server: %w", err)
	}
	if err := srv.Serve(); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

// run starts argv as the sandbox user with or without a PTY; called with s.mu held.
func (s *session) run(ctx context.Context, argv []string, withPTY bool) (retErr error) {
	cfg := &s.srv.cfg
	env := s.environ()
	path, err := mainproc.LookPath(argv[0], env)
	if err != nil {
		return err
	}
	cmd := &exec.Cmd{Path: path, Args: argv, Env: env, Dir: cfg.Dir,
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
	if withPTY {
		master, slave, err := pty.Open()
		if err != nil {
			return fmt.Errorf("open pty: %w", err)
		}
		cols, rows := uint16(s.pty.Cols), uint16(s.pty.Rows)
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
		p, err := startProc(cmd)
		if err != nil {
			return fmt.Errorf("start %s: %w", argv[0], err)
		}
		s.master, s.proc = master, p
		go func() { _, _ = io.Copy(master, s.ch) }()
		copyOut(s.ch, master)
	} else {
		inR, inW, err := os.Pipe()
		if err != nil {
			return err
		}
		outR, outW, err := os.Pipe()
		if err != nil {
			inR.Close()
			inW.Close()
			return err
		}
		errR, errW, err := os.Pipe()
		if err != nil {
			inR.Close()
			inW.Close()
			outR.Close()
			outW.Close()
			return err
		}
		// Bulk transfers (SFTP) move through these pipes: 1 MiB pipes and 256 KiB
		// copies take a tenth of the system calls and wake-ups of the 64 KiB/32 KiB
		// defaults. Best effort: a smaller pipe only costs speed.
		growPipe(inW)
		growPipe(outR)
		toClose = append(toClose, inR, outW, errW)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
		p, err := startProc(cmd)
		if err != nil {
			inW.Close()
			outR.Close()
			errR.Close()
			return fmt.Errorf("start %s: %w", argv[0], err)
		}
		s.proc = p
		go func() {
			// struct{io.Writer} hides (*os.File).ReadFrom, which would copy 32 KiB at a time.
			_, _ = io.CopyBuffer(struct{ io.Writer }{inW}, s.ch, make([]byte, copyBuf))
			inW.Close()
		}()
		copyOut(s.ch, outR)
		copyOut(s.ch.Stderr(), errR)
	}
	p := s.proc
	go func() {
		select {
		case <-p.Done():
		case <-ctx.Done():
			_ = p.Signal(syscall.SIGKILL)
			<-p.Done()
		}
		copiesDone := make(chan struct{})
		go func() { copies.Wait(); close(copiesDone) }()
		mainproc.DrainAfterExit(copiesDone, &progress, func() {
			for _, f := range readers {
				_ = f.SetReadDeadline(time.Now())
			}
		})
		// Under the lock: a window-change must not use the PTY while it is closed.
		s.mu.Lock()
		s.master = nil
		for _, f := range readers {
			f.Close()
		}
		s.mu.Unlock()
		s.finish(p.Status())
		close(s.done)
	}()
	return nil
}

// finish reports the exit status and ends the channel.
func (s *session) finish(st syscall.WaitStatus) {
	_ = s.ch.CloseWrite()
	if st.Signaled() {
		name := unix.SignalName(st.Signal())
		if len(name) > 3 {
			name = name[3:]
		}
		_, _ = s.ch.SendRequest("exit-signal", false, ssh.Marshal(struct {
			Signal     string
			CoreDumped bool
			Error      string
			Lang       string
		}{name, st.CoreDump(), "", ""}))
	}
	code := reaper.ExitCode(st)
	if code < 0 {
		code = 255
	}
	_, _ = s.ch.SendRequest("exit-status", false, binary.BigEndian.AppendUint32(nil, uint32(code)))
	_ = s.ch.Close()
}

// attachMain connects the channel to the main process: the replay buffer first, then
// live output; input and window changes go to its PTY. Called with s.mu held.
func (s *session) attachMain(ctx context.Context) error {
	if s.srv.cfg.Main == nil {
		return errors.New("no main process in this sandbox")
	}
	m := s.srv.cfg.Main()
	if m == nil {
		return errors.New("the main process has not started yet")
	}
	s.main = m
	if s.pty != nil {
		_ = m.Resize(uint16(s.pty.Cols), uint16(s.pty.Rows))
	}
	replay, live, detach := m.Attach()
	go func() {
		defer close(s.done)
		defer detach()
		if m.TTY() {
			go func() {
				buf := make([]byte, 32<<10)
				for {
					n, err := s.ch.Read(buf)
					if n > 0 {
						if _, werr := m.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
		if _, err := s.ch.Write(replay); err != nil {
			return
		}
		for {
			select {
			case chunk, ok := <-live:
				if !ok {
					select {
					case <-m.Done():
						s.finish(syscall.WaitStatus(m.ExitCode() << 8))
					default: // dropped as too slow
						s.finish(syscall.WaitStatus(1 << 8))
					}
					return
				}
				if _, err := s.ch.Write(chunk); err != nil {
					return
				}
			case <-ctx.Done():
				return
			case <-s.closed:
				return
			}
		}
	}()
	return nil
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// directTCPIP forwards a "direct-tcpip" channel (ssh -L, editors' remote helpers) to
// a loopback port inside the sandbox; other hosts are refused.
func (s *Server) directTCPIP(ctx context.Context, nc ssh.NewChannel) {
	var p struct {
		Host       string
		Port       uint32
		OriginHost string
		OriginPort uint32
	}
	if err := ssh.Unmarshal(nc.ExtraData(), &p); err != nil {
		_ = nc.Reject(ssh.ConnectionFailed, "malformed direct-tcpip request")
		return
	}
	if !IsLoopbackHost(p.Host) || p.Port == 0 || p.Port > 65535 {
		_ = nc.Reject(ssh.Prohibited, "only loopback ports inside the sandbox can be forwarded")
		return
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(p.Host, strconv.Itoa(int(p.Port))))
	if err != nil {
		_ = nc.Reject(ssh.ConnectionFailed, err.Error())
		return
	}
	defer c.Close()
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	defer ch.Close()
	go ssh.DiscardRequests(reqs)
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(c, ch); _ = c.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	go func() { _, _ = io.Copy(ch, c); _ = ch.CloseWrite(); done <- struct{}{} }()
	<-done
	<-done
}

// IsLoopbackHost reports whether host names the loopback interface.
func IsLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// copyBuf is the buffer size for copies between a channel and a program's pipes.
const copyBuf = 256 << 10

// growPipe raises a pipe's capacity to 1 MiB (the default limit of
// /proc/sys/fs/pipe-max-size); errors leave the default size.
func growPipe(f *os.File) {
	if rc, err := f.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, 1<<20) })
	}
}
