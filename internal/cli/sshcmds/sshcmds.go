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
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/internal/streamconn"
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

// openSSHForward creates an SSH session token and a ForwardTcp stream to the
// sandbox's SSH server; the returned conn speaks SSH.
func openSSHForward(ctx context.Context, api pb.OpenShellClient, sandboxID string) (*streamconn.Conn, error) {
	sess, err := api.CreateSshSession(ctx, &pb.CreateSshSessionRequest{SandboxId: sandboxID})
	if err != nil {
		return nil, fmt.Errorf("create ssh session for sandbox %s: %w", sandboxID, err)
	}
	return openForward(ctx, api, sandboxID, sess.GetToken())
}

// forwardData is a ForwardTcp data frame. The SSH client's packets are coalesced
// into frames of up to streamconn.Chunk by the Conn.
func forwardData(b []byte) *pb.TcpForwardFrame {
	return &pb.TcpForwardFrame{Payload: &pb.TcpForwardFrame_Data{Data: b}}
}

func openForward(ctx context.Context, api pb.OpenShellClient, sandboxID, token string) (*streamconn.Conn, error) {
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
	return streamconn.New(fctx, streamconn.Bidi(stream, forwardData, (*pb.TcpForwardFrame).GetData), cancel, "openshell-forward"), nil
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
func bridge(c *streamconn.Conn, in io.Reader, out io.Writer) error {
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
