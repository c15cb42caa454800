package sshd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/supervisor/mainproc"
	"github.com/openshell/openshell/supervisor/reaper"
	"github.com/openshell/openshell/supervisor/transfer"
)

// ServeTransfer serves one file-transfer relay on c (no SSH in between): the tar
// server runs as the sandbox user, confined as sessions are (Config.Start), with
// the policy's writable list, exactly as it would for any other session program.
// It returns when the transfer has ended and c is closed.
func (s *Server) ServeTransfer(ctx context.Context, c net.Conn, t *pb.TransferRelayTarget) {
	run := s.runTransfer
	if s.cfg.TarArgv == nil {
		run = transfer.InProcess(s.cfg.Dir, s.cfg.Writable)
	} else if sock := transfer.SocketFile(c); sock != nil {
		// A bulk stream's socket: the server reads and writes the relay itself
		// (ServeRelay's framing of c stays unused until the exit frame).
		defer sock.Close()
		run = func(ctx context.Context, req transfer.Request, _ io.Reader, _ io.Writer) transfer.Exit {
			return s.runTransferOn(ctx, req, sock)
		}
	}
	transfer.ServeRelay(ctx, c, t, run)
}

// transfersOnSocket counts transfers served on a bulk stream's socket (tests).
var transfersOnSocket atomic.Int64

// transferCmd is the transfer server for req, to run as the sandbox user.
func (s *Server) transferCmd(req transfer.Request, framed bool) (*exec.Cmd, error) {
	cfg := &s.cfg
	w, err := json.Marshal(cfg.Writable)
	if err != nil {
		return nil, err
	}
	rq, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	argv := append(slices.Clone(cfg.TarArgv), string(w))
	env := append(slices.Clone(cfg.Env), transfer.EnvRequest+"="+string(rq))
	if framed {
		env = append(env, transfer.EnvFramed+"=1")
	}
	path, err := mainproc.LookPath(argv[0], env)
	if err != nil {
		return nil, err
	}
	return &exec.Cmd{Path: path, Args: argv, Env: env, Dir: cfg.Dir,
		SysProcAttr: &syscall.SysProcAttr{Credential: cfg.User.Credential(), Setsid: true}}, nil
}

// runTransferOn runs the transfer server on the relay's socket itself (stdin and
// stdout, EnvFramed): the bytes go between the socket and the files in that one
// process. Its stderr becomes the exit's message, as for runTransfer.
func (s *Server) runTransferOn(ctx context.Context, req transfer.Request, sock *os.File) transfer.Exit {
	transfersOnSocket.Add(1)
	cmd, err := s.transferCmd(req, true)
	if err != nil {
		return transfer.ExitOf(err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		return transfer.ExitOf(err)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = sock, sock, errW
	start := s.cfg.Reaper.Start
	if s.cfg.Start != nil {
		start = s.cfg.Start
	}
	p, err := start(cmd)
	errW.Close()
	if err != nil {
		errR.Close()
		return transfer.ExitOf(fmt.Errorf("start the transfer server: %w", err))
	}
	var stderr bytes.Buffer
	read := make(chan struct{})
	go func() {
		defer close(read)
		_, _ = io.Copy(&stderr, io.LimitReader(errR, maxTransferStderr))
		errR.Close()
	}()
	select {
	case <-p.Done():
	case <-ctx.Done():
		_ = p.Signal(syscall.SIGKILL)
		<-p.Done()
	}
	<-read
	code := reaper.ExitCode(p.Status())
	switch {
	case ctx.Err() != nil:
		return transfer.Exit{Code: max(code, 1), Error: "the transfer was cancelled"}
	case code == 0:
		return transfer.Exit{}
	case stderr.Len() == 0:
		return transfer.Exit{Code: code, Error: fmt.Sprintf("the transfer server ended with status %d", code)}
	}
	return transfer.Exit{Code: code, Error: stderr.String()}
}

// maxTransferStderr bounds what the tar server's stderr may say.
const maxTransferStderr = 16 << 10

// runTransfer re-executes Config.TarArgv as the sandbox user with in and out as its
// stdin and stdout; its stderr becomes the exit's message.
func (s *Server) runTransfer(ctx context.Context, req transfer.Request, in io.Reader, out io.Writer) transfer.Exit {
	cfg := &s.cfg
	cmd, err := s.transferCmd(req, false)
	if err != nil {
		return transfer.ExitOf(err)
	}
	var pipes []*os.File
	closeAll := func() {
		for _, f := range pipes {
			f.Close()
		}
	}
	pipe := func() (r, w *os.File, err error) {
		if r, w, err = os.Pipe(); err == nil {
			pipes = append(pipes, r, w)
		}
		return r, w, err
	}
	inR, inW, err := pipe()
	if err != nil {
		return transfer.ExitOf(err)
	}
	outR, outW, err := pipe()
	if err != nil {
		closeAll()
		return transfer.ExitOf(err)
	}
	errR, errW, err := pipe()
	if err != nil {
		closeAll()
		return transfer.ExitOf(err)
	}
	// 1 MiB pipes: a quarter of the wake-ups of the 64 KiB default for bulk data.
	growPipe(inW)
	growPipe(outR)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	start := cfg.Reaper.Start
	if cfg.Start != nil {
		start = cfg.Start
	}
	p, err := start(cmd)
	inR.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		errR.Close()
		return transfer.ExitOf(fmt.Errorf("start the transfer server: %w", err))
	}
	defer outR.Close()
	// The stdin copy is not waited for: it ends when the server stops reading (its
	// pipe closes) or when the relay closes after the exit frame, whichever is first;
	// a client that stalls must not hold the exit frame back.
	go func() {
		// struct{io.Writer} hides (*os.File).ReadFrom, which would copy 32 KiB at a time.
		_, _ = io.CopyBuffer(struct{ io.Writer }{inW}, in, make([]byte, 1<<20))
		inW.Close()
	}()
	var stderr bytes.Buffer
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(&stderr, io.LimitReader(errR, maxTransferStderr))
		errR.Close()
	}()
	copied := make(chan error, 1)
	go func() {
		// struct{io.Reader} hides (*os.File).WriteTo, which would copy 32 KiB at a
		// time (a frame each) instead of what the pipe holds.
		_, err := io.CopyBuffer(out, struct{ io.Reader }{outR}, make([]byte, 1<<20))
		copied <- err
	}()
	gotCopy := false
	select {
	case err = <-copied:
		gotCopy = true
		if err != nil { // the client went away: stop the server rather than let it block
			_ = p.Signal(syscall.SIGKILL)
		}
	case <-ctx.Done():
		_ = p.Signal(syscall.SIGKILL)
	}
	<-p.Done()
	outR.Close() // unblocks the copy if the server left its stdout to a child
	inW.Close()  // and the stdin copy, if it is blocked on a full pipe
	if !gotCopy {
		err = <-copied
	}
	wg.Wait()
	code := reaper.ExitCode(p.Status())
	if code == 0 && err == nil && ctx.Err() == nil {
		return transfer.Exit{}
	}
	msg := stderr.String()
	switch {
	case ctx.Err() != nil:
		msg = "the transfer was cancelled"
	case err != nil && msg == "":
		msg = fmt.Sprintf("sending to the client: %v", err)
	case msg == "":
		msg = fmt.Sprintf("the transfer server ended with status %d", code)
	}
	if code == 0 {
		code = 1
	}
	return transfer.Exit{Code: code, Error: msg}
}
