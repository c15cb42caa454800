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
// sandbox's SSH server; the returned conn speaks SSH. fingerprint is the host key
// the sandbox's supervisor registered with the gateway ("SHA256:…", "" for none).
func openSSHForward(ctx context.Context, api pb.OpenShellClient, sandboxID string) (c *streamconn.Conn, fingerprint string, err error) {
	sess, err := api.CreateSshSession(ctx, &pb.CreateSshSessionRequest{SandboxId: sandboxID})
	if err != nil {
		return nil, "", fmt.Errorf("create ssh session for sandbox %s: %w", sandboxID, err)
	}
	c, err = openForward(ctx, api, &pb.TcpForwardInit{SandboxId: sandboxID,
		Target: &pb.TcpForwardInit_Ssh{Ssh: &pb.SshRelayTarget{}}, AuthorizationToken: sess.GetToken()})
	return c, sess.GetHostKeyFingerprint(), err
}

// ErrHostKey: the SSH server reached through the gateway is not the sandbox's own
// supervisor (its host key is not the one registered with the gateway).
var ErrHostKey = errors.New("sandbox SSH host key not verified")

// pinnedHostKey accepts only the host key whose fingerprint the gateway reported for
// the sandbox: the key its supervisor registered when its session opened.
func pinnedHostKey(sandboxID, fingerprint string) ssh.HostKeyCallback {
	return func(_ string, _ net.Addr, key ssh.PublicKey) error {
		got := ssh.FingerprintSHA256(key)
		switch {
		case fingerprint == "":
			return fmt.Errorf("%w: the gateway has no host key registered for sandbox %s (its supervisor registered none when its session opened; restart the sandbox with a current openshell-sandbox); it presented %s",
				ErrHostKey, sandboxID, got)
		case got != fingerprint:
			return fmt.Errorf("%w: sandbox %s presented host key %s, but its supervisor registered %s with the gateway; refusing to connect (the connection did not reach the sandbox's own supervisor)",
				ErrHostKey, sandboxID, got, fingerprint)
		}
		return nil
	}
}

// forwardData is a ForwardTcp data frame. The SSH client's packets are coalesced
// into frames of up to streamconn.Chunk by the Conn.
func forwardData(b []byte) *pb.TcpForwardFrame {
	return &pb.TcpForwardFrame{Payload: &pb.TcpForwardFrame_Data{Data: b}}
}

// openForward opens a ForwardTcp stream with init (the sandbox and the target: its
// SSH server, or a TCP port on its loopback) and returns it as a connection.
func openForward(ctx context.Context, api pb.OpenShellClient, init *pb.TcpForwardInit) (*streamconn.Conn, error) {
	sandboxID := init.GetSandboxId()
	fctx, cancel := context.WithCancel(ctx)
	stream, err := api.ForwardTcp(fctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("open forward to sandbox %s: %w", sandboxID, err)
	}
	if err := stream.Send(&pb.TcpForwardFrame{Payload: &pb.TcpForwardFrame_Init{Init: init}}); err != nil {
		_, rerr := stream.Recv()
		cancel()
		if rerr != nil && !errors.Is(rerr, io.EOF) {
			return nil, fmt.Errorf("forward to sandbox %s: %w", sandboxID, rerr)
		}
		return nil, fmt.Errorf("forward to sandbox %s: %w", sandboxID, err)
	}
	return streamconn.New(fctx, streamconn.Bidi(stream, forwardData, (*pb.TcpForwardFrame).GetData), cancel, "openshell-forward"), nil
}

// handshake runs the SSH client handshake with the sandbox's SSH server through the
// gateway. The host key must be the one its supervisor registered with the gateway;
// once it is, onKey (when not nil) sees it and may end the handshake with an error.
func handshake(ctx context.Context, api pb.OpenShellClient, sandboxID string, onKey func(ssh.PublicKey) error) (*ssh.Client, error) {
	c, fp, err := openSSHForward(ctx, api, sandboxID)
	if err != nil {
		return nil, err
	}
	check := pinnedHostKey(sandboxID, fp)
	if onKey != nil {
		pinned := check
		check = func(host string, addr net.Addr, key ssh.PublicKey) error {
			if err := pinned(host, addr, key); err != nil {
				return err
			}
			return onKey(key)
		}
	}
	type result struct {
		cl  *ssh.Client
		err error
	}
	ch := make(chan result, 1)
	go func() {
		sc, chans, reqs, err := ssh.NewClientConn(c, "sandbox", &ssh.ClientConfig{
			User: "sandbox", HostKeyCallback: check,
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
// and editors run; it bridges stdin/stdout to the sandbox's SSH server. With
// --known-hosts it is the KnownHostsCommand instead: it prints the known_hosts line
// of the sandbox's current host key, verified against the key its supervisor
// registered with the gateway, so OpenSSH checks every connection against it.
func SSHProxyCommand(dial DialFunc) *cobra.Command {
	var name string
	var knownHosts bool
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
			if knownHosts {
				key, err := verifiedHostKey(ctx, api, id)
				if err != nil {
					return err
				}
				_, err = fmt.Fprint(cmd.OutOrStdout(), KnownHostsLine(name, key))
				return err
			}
			c, _, err := openSSHForward(ctx, api, id)
			if err != nil {
				return err
			}
			defer c.Close()
			return bridge(c, cmd.InOrStdin(), cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVarP(&name, "name", "n", "", "sandbox name")
	cmd.Flags().BoolVar(&knownHosts, "known-hosts", false, "print the sandbox's verified known_hosts line and exit (an ssh KnownHostsCommand)")
	_ = cmd.MarkFlagRequired("name")
	return cmd
}

// KnownHostsLine is the known_hosts line of a sandbox's host key under its ssh host
// name (HostAlias).
func KnownHostsLine(name string, key ssh.PublicKey) string {
	return HostAlias(name) + " " + string(ssh.MarshalAuthorizedKey(key))
}

// errGotKey ends a handshake once the host key is verified: the key is all we want.
var errGotKey = errors.New("host key verified")

// verifiedHostKey reaches the sandbox's SSH server through the gateway and returns
// its host key once it matches the key its supervisor registered with the gateway.
func verifiedHostKey(ctx context.Context, api pb.OpenShellClient, sandboxID string) (ssh.PublicKey, error) {
	got := make(chan ssh.PublicKey, 1)
	_, err := handshake(ctx, api, sandboxID, func(key ssh.PublicKey) error {
		got <- key
		return errGotKey
	})
	select {
	case key := <-got:
		return key, nil
	default:
		return nil, err
	}
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
