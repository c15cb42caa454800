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
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

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
	running *Running      // running program
	proc    *reaper.Proc  // running program
	main    MainTarget    // set when attached to the main process
	done    chan struct{} // closed when the program finished
	closed  chan struct{} // closed when the channel's requests ended
	// replied is closed once the request that started the program was answered:
	// the exit status waits for it, because a client whose exec is answered after
	// the channel closed sees its exec fail (EOF) instead of the program's status.
	replied     chan struct{}
	repliedOnce sync.Once
}

func (s *session) markReplied() { s.repliedOnce.Do(func() { close(s.replied) }) }

func (s *session) serve(ctx context.Context, reqs <-chan *ssh.Request) {
	s.done = make(chan struct{})
	s.closed = make(chan struct{})
	s.replied = make(chan struct{})
	defer func() {
		// The client closed the channel (or the program finished and we closed it).
		s.markReplied()
		close(s.closed)
		s.mu.Lock()
		started, running := s.started, s.running
		s.mu.Unlock()
		if started {
			if running != nil {
				running.HangUp()
			}
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
		s.mu.Lock()
		started := s.started
		s.mu.Unlock()
		if started {
			s.markReplied()
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
		case s.running != nil:
			_ = s.running.Resize(uint16(w.Cols), uint16(w.Rows))
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
		// To the program's group (it leads its own session): a client's signal is
		// how the gateway cancels an exec, and a shell killed alone would leave its
		// children running, out of HangUp's reach once the shell is reaped.
		return true, s.proc.SignalGroup(n)
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

// run starts argv as the sandbox user with or without a PTY (Server.Start); called
// with s.mu held.
func (s *session) run(ctx context.Context, argv []string, withPTY bool) error {
	p := Program{Argv: argv, Env: s.env, Stdin: s.ch, Stdout: s.ch, Stderr: s.ch.Stderr()}
	if withPTY {
		p.TTY, p.Term = &Winsize{Cols: uint16(s.pty.Cols), Rows: uint16(s.pty.Rows)}, s.pty.Term
	}
	r, err := s.srv.Start(ctx, p)
	if err != nil {
		return err
	}
	s.running, s.proc = r, r.Proc
	go func() {
		<-r.Done()
		s.finish(r.Status())
		close(s.done)
	}()
	return nil
}

// finish reports the exit status and ends the channel, after the reply to the
// request that started the program.
func (s *session) finish(st syscall.WaitStatus) {
	<-s.replied
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
