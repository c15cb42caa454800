// Package sshcmds is the CLI side of exec, connect, ssh-config, upload, download,
// logs and ssh-proxy. Every command resolves the sandbox name to its id with
// GetSandbox, then talks to the gateway only (ExecSandbox, ForwardTcp, …): the CLI
// never reaches a sandbox directly.
package sshcmds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/internal/grpcopts"
)

// DialFunc connects to the configured gateway.
type DialFunc func(ctx context.Context) (*grpc.ClientConn, error)

// ExitCodeError carries a remote command's exit code; main exits with it.
type ExitCodeError struct{ Code int }

func (e *ExitCodeError) Error() string { return fmt.Sprintf("command exited with code %d", e.Code) }

// Commands returns the sandbox subcommands: exec, connect, ssh-config, upload,
// download, logs.
func Commands(dial DialFunc) []*cobra.Command {
	return []*cobra.Command{
		execCmd(dial), connectCmd(dial), sshConfigCmd(), uploadCmd(dial), downloadCmd(dial), logsCmd(dial),
	}
}

// resolve returns the id of the sandbox called name.
func resolve(ctx context.Context, api pb.OpenShellClient, name string) (string, error) {
	if name == "" {
		return "", errors.New("no sandbox name given: pass it as NAME or with --name")
	}
	resp, err := api.GetSandbox(ctx, &pb.GetSandboxRequest{Name: name})
	if err != nil {
		if status.Code(err) == codes.NotFound {
			return "", fmt.Errorf("sandbox %q not found (see `openshell sandbox list`)", name)
		}
		return "", fmt.Errorf("look up sandbox %q: %w", name, err)
	}
	id := resp.GetSandbox().GetMetadata().GetId()
	if id == "" {
		return "", fmt.Errorf("gateway returned sandbox %q without an id", name)
	}
	return id, nil
}

// forwardConn is a ForwardTcp stream as a net.Conn.
//
// Writes are coalesced: Write only queues bytes, and one sender goroutine sends
// whatever has queued as frames of up to forwardChunk. The SSH client writes one
// packet (at most ~32 KiB) per Write; sending each as its own frame would multiply
// the per-frame costs along the whole relay path.
type forwardConn struct {
	stream grpc.BidiStreamingClient[pb.TcpForwardFrame, pb.TcpForwardFrame]
	cancel context.CancelFunc
	buf    []byte
	rmu    sync.Mutex

	wmu     sync.Mutex
	wcond   sync.Cond // pending changed, or closing/werr set
	pending []byte
	closing bool  // no more writes: the sender flushes, then half-closes
	werr    error // the sender failed; writes fail with it
	sent    chan struct{}
	stopCtx func() bool
	once    sync.Once
}

const (
	// forwardChunk is the largest frame sent.
	forwardChunk = grpcopts.RelayChunk
	// forwardQueue bounds the queued bytes: a writer blocks beyond it, so a slow
	// peer pushes back.
	forwardQueue = 1 << 20
)

func newForwardConn(ctx context.Context, stream grpc.BidiStreamingClient[pb.TcpForwardFrame, pb.TcpForwardFrame], cancel context.CancelFunc) *forwardConn {
	c := &forwardConn{stream: stream, cancel: cancel, sent: make(chan struct{})}
	c.wcond.L = &c.wmu
	// A cancelled stream ends the sender even if nobody closes the conn.
	c.stopCtx = context.AfterFunc(ctx, func() {
		c.wmu.Lock()
		c.closing = true
		c.wmu.Unlock()
		c.wcond.Broadcast()
	})
	go c.sender()
	return c
}

func (c *forwardConn) sender() {
	defer close(c.sent)
	var spare []byte
	for {
		c.wmu.Lock()
		for len(c.pending) == 0 && !c.closing {
			c.wcond.Wait()
		}
		if len(c.pending) == 0 {
			c.wmu.Unlock()
			_ = c.stream.CloseSend()
			return
		}
		batch := c.pending
		c.pending = spare[:0]
		c.wmu.Unlock()
		c.wcond.Broadcast()
		for off := 0; off < len(batch); off += forwardChunk {
			// Send marshals before it returns (no stats handler keeps the message),
			// so batch is reused afterwards.
			if err := c.stream.Send(&pb.TcpForwardFrame{Payload: &pb.TcpForwardFrame_Data{Data: batch[off:min(len(batch), off+forwardChunk)]}}); err != nil {
				c.wmu.Lock()
				c.werr = err
				c.pending = nil
				c.wmu.Unlock()
				c.wcond.Broadcast()
				return
			}
		}
		spare = batch
	}
}

func (c *forwardConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for len(c.buf) == 0 {
		f, err := c.stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return 0, io.EOF
			}
			return 0, err
		}
		c.buf = f.GetData()
	}
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	return n, nil
}

func (c *forwardConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	written := 0
	for len(p) > 0 {
		for len(c.pending) >= forwardQueue && c.werr == nil && !c.closing {
			c.wcond.Wait()
		}
		if c.werr != nil {
			return written, c.werr
		}
		if c.closing {
			return written, net.ErrClosed
		}
		n := min(len(p), forwardQueue-len(c.pending))
		c.pending = append(c.pending, p[:n]...)
		p, written = p[n:], written+n
		c.wcond.Broadcast()
	}
	return written, nil
}

// finish stops writes and waits (at most wait) for the queued bytes to be sent and
// the stream half-closed.
func (c *forwardConn) finish(wait time.Duration) error {
	c.wmu.Lock()
	c.closing = true
	c.wmu.Unlock()
	c.wcond.Broadcast()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-c.sent:
	case <-t.C:
		return errors.New("forward: queued data not sent in time")
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.werr
}

// CloseWrite half-closes: the sandbox side sees EOF after the queued bytes.
func (c *forwardConn) CloseWrite() error { return c.finish(time.Minute) }

func (c *forwardConn) Close() error {
	c.once.Do(func() {
		// Give queued bytes a moment to leave; a peer that stopped reading must
		// not hold Close up.
		_ = c.finish(2 * time.Second)
		c.stopCtx()
		c.cancel()
	})
	return nil
}

type fwdAddr struct{}

func (fwdAddr) Network() string { return "openshell-forward" }
func (fwdAddr) String() string  { return "openshell-forward" }

func (c *forwardConn) LocalAddr() net.Addr              { return fwdAddr{} }
func (c *forwardConn) RemoteAddr() net.Addr             { return fwdAddr{} }
func (c *forwardConn) SetDeadline(time.Time) error      { return nil }
func (c *forwardConn) SetReadDeadline(time.Time) error  { return nil }
func (c *forwardConn) SetWriteDeadline(time.Time) error { return nil }

// openSSHForward creates an SSH session token and a ForwardTcp stream to the
// sandbox's SSH server; the returned conn speaks SSH.
func openSSHForward(ctx context.Context, api pb.OpenShellClient, sandboxID string) (*forwardConn, error) {
	sess, err := api.CreateSshSession(ctx, &pb.CreateSshSessionRequest{SandboxId: sandboxID})
	if err != nil {
		return nil, fmt.Errorf("create ssh session for sandbox %s: %w", sandboxID, err)
	}
	return openForward(ctx, api, sandboxID, sess.GetToken())
}

func openForward(ctx context.Context, api pb.OpenShellClient, sandboxID, token string) (*forwardConn, error) {
	fctx, cancel := context.WithCancel(ctx)
	stream, err := api.ForwardTcp(fctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("open forward to sandbox %s: %w", sandboxID, err)
	}
	if err := stream.Send(&pb.TcpForwardFrame{Payload: &pb.TcpForwardFrame_Init{Init: &pb.TcpForwardInit{
		SandboxId: sandboxID, Target: &pb.TcpForwardInit_Ssh{Ssh: &pb.SshRelayTarget{}}, AuthorizationToken: token,
	}}}); err != nil {
		_, rerr := stream.Recv()
		cancel()
		if rerr != nil && !errors.Is(rerr, io.EOF) {
			return nil, fmt.Errorf("forward to sandbox %s: %w", sandboxID, rerr)
		}
		return nil, fmt.Errorf("forward to sandbox %s: %w", sandboxID, err)
	}
	return newForwardConn(fctx, stream, cancel), nil
}

// sshClient opens an SSH client to the sandbox through the gateway.
func sshClient(ctx context.Context, api pb.OpenShellClient, sandboxID string) (*ssh.Client, error) {
	c, err := openSSHForward(ctx, api, sandboxID)
	if err != nil {
		return nil, err
	}
	type result struct {
		cl  *ssh.Client
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// Host key not checked: the server is reached only through the gateway,
		// which authenticated us and the sandbox; its key changes every start.
		sc, chans, reqs, err := ssh.NewClientConn(c, "sandbox", &ssh.ClientConfig{
			User: "sandbox", HostKeyCallback: ssh.InsecureIgnoreHostKey(), //nolint:gosec // see above
		})
		if err != nil {
			ch <- result{err: err}
			return
		}
		ch <- result{cl: ssh.NewClient(sc, chans, reqs)}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			c.Close()
			return nil, fmt.Errorf("ssh to sandbox %s through the gateway: %w", sandboxID, r.err)
		}
		return r.cl, nil
	case <-time.After(30 * time.Second):
		c.Close()
		return nil, fmt.Errorf("ssh to sandbox %s: no answer within 30s (is the sandbox ready? see `openshell sandbox get`)", sandboxID)
	case <-ctx.Done():
		c.Close()
		return nil, ctx.Err()
	}
}

func connect(ctx context.Context, dial DialFunc) (pb.OpenShellClient, func(), error) {
	cc, err := dial(ctx)
	if err != nil {
		return nil, nil, err
	}
	return pb.NewOpenShellClient(cc), func() { cc.Close() }, nil
}

// SSHProxyCommand is `ssh-proxy --name NAME`: the ProxyCommand that ssh, scp, rsync
// and editors run; it bridges stdin/stdout to the sandbox's SSH server.
func SSHProxyCommand(dial DialFunc) *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:    "ssh-proxy --name NAME",
		Short:  "Bridge stdin/stdout to a sandbox's SSH server (used as an ssh ProxyCommand)",
		Hidden: false,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			api, closeFn, err := connect(ctx, dial)
			if err != nil {
				return err
			}
			defer closeFn()
			id, err := resolve(ctx, api, name)
			if err != nil {
				return err
			}
			c, err := openSSHForward(ctx, api, id)
			if err != nil {
				return err
			}
			defer c.Close()
			return bridge(c, cmd.InOrStdin(), cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVarP(&name, "name", "n", "", "sandbox name")
	_ = cmd.MarkFlagRequired("name")
	return cmd
}

// bridge copies in → c and c → out until the remote side ends.
func bridge(c *forwardConn, in io.Reader, out io.Writer) error {
	go func() {
		_, _ = io.Copy(c, in)
		_ = c.CloseWrite()
	}()
	_, err := io.Copy(out, c)
	if err != nil && status.Code(err) != codes.Canceled {
		return fmt.Errorf("ssh-proxy: %w", err)
	}
	return nil
}
