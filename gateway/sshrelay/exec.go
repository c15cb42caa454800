package sshrelay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/internal/relayframe"
)

// OpenFunc opens a relay with target to the sandbox's supervisor (the hub's
// OpenRelay for one sandbox).
type OpenFunc = func(ctx context.Context, target *pb.RelayOpen) (io.ReadWriteCloser, error)

// errSSHOnly: the supervisor answered an exec relay with its SSH server. A
// supervisor older than exec relays takes the target it does not know for "ssh";
// its SSH server speaks first ("SSH-2.0-…"), where an exec relay starts with a
// hello frame.
//
// Such a sandbox is served over SSH as before, on a second relay, rather than
// refused: VM runners and containers outlive a gateway upgrade, and an exec that
// worked before the upgrade keeps working until the sandbox is re-created.
var errSSHOnly = errors.New("the sandbox supervisor has no exec relay (it answered with SSH)")

// sshBanner is how an SSH server's first line starts.
var sshBanner = []byte("SSH-")

// ExecTarget is the relay target that runs req.
func ExecTarget(req *pb.ExecSandboxRequest) *pb.RelayOpen {
	t := &pb.ExecRelayTarget{Command: req.GetCommand(), Environment: req.GetEnvironment(), Workdir: req.GetWorkdir(), Tty: req.GetTty()}
	if req.GetTty() {
		cols, rows := defaultSize(req.GetCols(), req.GetRows())
		t.Cols, t.Rows = uint32(cols), uint32(rows)
	}
	return &pb.RelayOpen{Target: &pb.RelayOpen_Exec{Exec: t}}
}

func sshTarget() *pb.RelayOpen {
	return &pb.RelayOpen{Target: &pb.RelayOpen_Ssh{Ssh: &pb.SshRelayTarget{}}}
}

// Exec runs req in the sandbox, streaming stdout/stderr events and ending with
// exactly one exit event (124 when timeout_seconds elapses). When the exit status
// cannot be known it returns an error instead of an exit event.
func Exec(ctx context.Context, open OpenFunc, req *pb.ExecSandboxRequest, send func(*pb.ExecSandboxEvent) error) error {
	conn, err := open(ctx, ExecTarget(req))
	if err != nil {
		return err
	}
	err = runRelay(ctx, conn, req, nil, send)
	if !errors.Is(err, errSSHOnly) {
		return err
	}
	if conn, err = open(ctx, sshTarget()); err != nil {
		return err
	}
	defer conn.Close()
	return execSSH(ctx, conn, req, send)
}

// Interactive runs first in the sandbox and streams stdin and resize frames from
// recv into it (with a PTY when first.tty) until the command exits; it ends with
// one exit event. A client half-close sends EOF to the command's stdin.
func Interactive(ctx context.Context, open OpenFunc, first *pb.ExecSandboxRequest,
	recv func() (*pb.ExecSandboxInput, error), send func(*pb.ExecSandboxEvent) error) error {
	conn, err := open(ctx, ExecTarget(first))
	if err != nil {
		return err
	}
	err = runRelay(ctx, conn, first, recv, send)
	if !errors.Is(err, errSSHOnly) {
		return err
	}
	if conn, err = open(ctx, sshTarget()); err != nil {
		return err
	}
	defer conn.Close()
	return interactiveSSH(ctx, conn, first, recv, send)
}

// runRelay runs req on an exec relay and closes conn. recv nil: req.stdin is the
// whole input. It returns errSSHOnly, before any event, when an SSH server answered.
func runRelay(ctx context.Context, conn io.ReadWriteCloser, req *pb.ExecSandboxRequest,
	recv func() (*pb.ExecSandboxInput, error), send func(*pb.ExecSandboxEvent) error) error {
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	w := relayframe.NewWriter(conn)
	rd := relayframe.NewReader(conn)
	if recv == nil {
		// Input goes out while the supervisor starts the command: no round trip
		// waits on it. Write errors show up on the read side.
		go func() {
			if len(req.GetStdin()) > 0 {
				if w.Frame(relayframe.ExecStdin, req.GetStdin()) != nil {
					return
				}
			}
			_ = w.Frame(relayframe.ExecStdinEOF, nil)
		}()
	}
	if b, err := rd.Peek(len(sshBanner)); err == nil && bytes.Equal(b, sshBanner) {
		return errSSHOnly
	}
	o, err := relayframe.ReadOutput(rd)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return status.Errorf(codes.Unavailable, "exec in the sandbox: %v", err)
	}
	if o.Kind != relayframe.ExecHello {
		return status.Errorf(codes.Unavailable, "exec in the sandbox: the supervisor's first frame is %q, not hello", o.Kind)
	}
	k := &sink{send: send}
	exited := make(chan error, 1)
	go func() { exited <- readOutputs(rd, k) }()

	recvErr := make(chan error, 1)
	cancelSig := "KILL"
	if recv != nil {
		cancelSig = "HUP"
		go pumpInput(ctx, w, req.GetStdin(), recv, recvErr)
	}
	var timeout <-chan time.Time
	if s := req.GetTimeoutSeconds(); s > 0 {
		t := time.NewTimer(time.Duration(s) * time.Second)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case err := <-exited:
		return err
	case <-timeout:
		_ = w.Frame(relayframe.ExecSignal, []byte("KILL"))
		return k.exit(TimeoutExitCode)
	case err := <-recvErr:
		k.stop()
		_ = w.Frame(relayframe.ExecSignal, []byte(cancelSig))
		return err
	case <-ctx.Done():
		k.stop()
		_ = w.Frame(relayframe.ExecSignal, []byte(cancelSig))
		return ctx.Err()
	}
}

// readOutputs passes the supervisor's frames on as events until the exit frame.
func readOutputs(rd *relayframe.Reader, k *sink) error {
	for {
		o, err := relayframe.ReadOutput(rd)
		if err != nil {
			return status.Errorf(codes.Unavailable, "the sandbox connection was lost: %v", err)
		}
		switch o.Kind {
		case relayframe.ExecStdout, relayframe.ExecStderr:
			if _, err := k.write(o.Kind == relayframe.ExecStderr, o.Data); err != nil {
				return err
			}
		case relayframe.ExecExit:
			if o.Exit.Error != "" {
				return status.Errorf(codes.InvalidArgument, "the sandbox supervisor refused the exec: %s", o.Exit.Error)
			}
			return k.exit(o.Exit.Code)
		case relayframe.ExecHello:
			return status.Error(codes.Unavailable, "exec in the sandbox: a second hello frame from the supervisor")
		}
	}
}

// pumpInput sends first's stdin and then recv's stdin and resize frames; the
// client's half-close closes the command's stdin. A recv error goes to recvErr.
func pumpInput(ctx context.Context, w *relayframe.Writer, stdin []byte,
	recv func() (*pb.ExecSandboxInput, error), recvErr chan<- error) {
	if len(stdin) > 0 {
		if w.Frame(relayframe.ExecStdin, stdin) != nil {
			return
		}
	}
	for {
		in, err := recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				_ = w.Frame(relayframe.ExecStdinEOF, nil)
				return
			}
			if ctx.Err() == nil {
				recvErr <- err
			}
			return
		}
		switch p := in.GetPayload().(type) {
		case *pb.ExecSandboxInput_Stdin:
			err = w.Frame(relayframe.ExecStdin, p.Stdin)
		case *pb.ExecSandboxInput_Resize:
			cols, rows := clampWindow(p.Resize.GetCols()), clampWindow(p.Resize.GetRows())
			if cols == 0 || rows == 0 {
				continue // a terminal that reports no size: keep the last one
			}
			err = relayframe.WriteWindow(w, cols, rows)
		}
		if err != nil {
			return
		}
	}
}

// clampWindow bounds a window dimension to what the relay carries (0 stays 0).
func clampWindow(n uint32) uint16 {
	return uint16(min(n, relayframe.MaxWinsize))
}

// CheckWindow is what ExecSandbox accepts as a start size: 0 (the default) or 1-MaxWinsize.
func CheckWindow(cols, rows uint32) error {
	if cols > relayframe.MaxWinsize || rows > relayframe.MaxWinsize {
		return fmt.Errorf("cols %d / rows %d: each must be at most %d (0 = the default 80x24)", cols, rows, relayframe.MaxWinsize)
	}
	return nil
}
