package sshcmds

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// quote shell-quotes s (ProxyCommand lines are run by the user's shell).
func quote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,+@%", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// ProxyCommand is the ssh ProxyCommand reaching sandbox name: this executable's
// ssh-proxy, with the root's persistent flags that were set (--gateway, TLS, …) so
// that the proxy talks to the same gateway.
func ProxyCommand(cmd *cobra.Command, name string) string { return proxyCommand(cmd, name) }

// KnownHostsCommand is the ssh KnownHostsCommand for sandbox name: ssh-proxy
// --known-hosts prints the sandbox's host key once it matches the key its supervisor
// registered with the gateway, so ssh (StrictHostKeyChecking yes) accepts that key
// only, and a restarted sandbox's new key without editing any file.
func KnownHostsCommand(cmd *cobra.Command, name string) string {
	return proxyCommand(cmd, name, "--known-hosts")
}

func proxyCommand(cmd *cobra.Command, name string, extra ...string) string {
	self, err := os.Executable()
	if err != nil {
		self = "openshell"
	}
	parts := []string{quote(self), "ssh-proxy"}
	if cmd != nil {
		cmd.Root().PersistentFlags().VisitAll(func(f *pflag.Flag) {
			if f.Changed {
				parts = append(parts, quote("--"+f.Name+"="+f.Value.String()))
			}
		})
	}
	parts = append(parts, extra...)
	parts = append(parts, "--name", quote(name))
	return strings.Join(parts, " ")
}

// HostAlias is the ssh host name of a sandbox in ssh-config output.
func HostAlias(name string) string { return "openshell-" + name }

// SSHConfig renders a Host block usable by ssh, scp, rsync and editors (OpenSSH 8.5
// or later, for KnownHostsCommand). The host key is checked strictly against the one
// knownHosts prints: the key the sandbox's supervisor registered with the gateway.
func SSHConfig(name, proxy, knownHosts string) string {
	return fmt.Sprintf(`Host %s
    HostName %s
    User sandbox
    ProxyCommand %s
    KnownHostsCommand %s
    StrictHostKeyChecking yes
    UserKnownHostsFile /dev/null
    GlobalKnownHostsFile /dev/null
    UpdateHostKeys no
    LogLevel ERROR
`, HostAlias(name), HostAlias(name), proxy, knownHosts)
}

func sshConfigCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "ssh-config NAME",
		Short: "Print an ssh_config Host block for a sandbox (append it to ~/.ssh/config)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := fmt.Fprint(cmd.OutOrStdout(), SSHConfig(args[0], ProxyCommand(cmd, args[0]), KnownHostsCommand(cmd, args[0])))
			return err
		},
	}
}

func connectCmd(dial DialFunc) *cobra.Command {
	_ = dial // the ssh-proxy child dials; kept for symmetry with the other commands
	var forceTTY bool
	cmd := &cobra.Command{
		Use:   "connect NAME [-- REMOTE-COMMAND…]",
		Short: "Open an interactive shell in a sandbox with the system ssh",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sshPath, err := exec.LookPath("ssh")
			if err != nil {
				return errors.New("ssh not found on PATH: install an OpenSSH client (Debian: apt-get install openssh-client)")
			}
			name := args[0]
			sshArgs := []string{
				"-o", "ProxyCommand=" + ProxyCommand(cmd, name),
				// The host key must be the one the sandbox's supervisor registered
				// with the gateway (see KnownHostsCommand).
				"-o", "KnownHostsCommand=" + KnownHostsCommand(cmd, name),
				"-o", "StrictHostKeyChecking=yes",
				"-o", "UserKnownHostsFile=/dev/null",
				"-o", "GlobalKnownHostsFile=/dev/null",
				"-o", "UpdateHostKeys=no",
				"-o", "LogLevel=ERROR",
				"-l", "sandbox",
			}
			if forceTTY {
				sshArgs = append(sshArgs, "-tt")
			}
			sshArgs = append(sshArgs, HostAlias(name))
			sshArgs = append(sshArgs, args[1:]...)
			c := exec.CommandContext(cmd.Context(), sshPath, sshArgs...)
			c.Stdin, c.Stdout, c.Stderr = cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr()
			err = c.Run()
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				return &ExitCodeError{Code: ee.ExitCode()}
			}
			return err
		},
	}
	cmd.Flags().BoolVarP(&forceTTY, "tty", "t", false, "force a terminal even when stdin is not one (ssh -tt)")
	return cmd
}
