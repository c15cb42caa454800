package sshcmds

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"
	"google.golang.org/grpc"

	"github.com/openshell/openshell/internal/testenv"
	"github.com/openshell/openshell/internal/testkeys"
)

// TestMain lets the test binary stand in for `openshell ssh-proxy` when OpenSSH runs
// the ProxyCommand / KnownHostsCommand that ssh-config rendered (os.Executable is
// the test binary): `<test binary> ssh-proxy --gateway=http://ADDR …`.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "ssh-proxy" {
		var gw string
		root := &cobra.Command{Use: "openshell", SilenceUsage: true, SilenceErrors: true}
		root.PersistentFlags().StringVar(&gw, "gateway", "", "gateway address")
		root.AddCommand(SSHProxyCommand(func(ctx context.Context) (*grpc.ClientConn, error) {
			return dialAddr(strings.TrimPrefix(gw, "http://"))(ctx)
		}))
		root.SetArgs(os.Args[1:])
		if err := root.Execute(); err != nil {
			os.Stderr.WriteString("ssh-proxy: " + err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestCLIChecksRegisteredHostKey: the known-hosts printer speaks SSH through the
// gateway itself; when the sandbox's SSH server presents a key other than the one
// its supervisor registered (the fingerprint CreateSshSession reports), it fails with
// an error naming both fingerprints. (Upload and download no longer speak SSH: they
// use the transfer relay, which only the sandbox's bound supervisor can answer.)
func TestCLIChecksRegisteredHostKey(t *testing.T) {
	dial, _, h := setupGateway(t)
	out, _, err := run(t, dial, nil, "ssh-proxy", "--known-hosts", "--name", "box")
	if err != nil {
		t.Fatal(err)
	}
	if out != KnownHostsLine("box", h.serverKey) {
		t.Fatalf("known-hosts line %q, want %q", out, KnownHostsLine("box", h.serverKey))
	}

	registered := testkeys.SSHPublicKey(t)
	h.g.setHostKey(registered)
	for _, args := range [][]string{
		{"ssh-proxy", "--known-hosts", "--name", "box"},
	} {
		out, _, err := run(t, dial, nil, args...)
		if !errors.Is(err, ErrHostKey) {
			t.Fatalf("%v with a changed host key: %v (out %q), want ErrHostKey", args, err, out)
		}
		for _, want := range []string{ssh.FingerprintSHA256(registered), ssh.FingerprintSHA256(h.serverKey), "refusing"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%v: error %q does not mention %q", args, err, want)
			}
		}
	}
}

// TestOpenSSHChecksRegisteredHostKey runs the system ssh with the Host block that
// ssh-config prints: it connects while the sandbox presents the registered key and
// does not once the registered key differs.
func TestOpenSSHChecksRegisteredHostKey(t *testing.T) {
	sshPath := testenv.RequireCommand(t, "ssh", "apt-get install openssh-client")
	dial, _, h := setupGateway(t)
	cfgText, _, err := run(t, dial, nil, "--gateway", "http://"+h.addr, "sandbox", "ssh-config", "box")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "config")
	if err := os.WriteFile(cfgFile, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	ssh := func() (string, error) {
		ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, sshPath, "-F", cfgFile, "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "openshell-box", "echo", "pinned-ok")
		cmd.Env = append(os.Environ(), "HOME="+dir)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := ssh()
	if err != nil || strings.TrimSpace(out) != "pinned-ok" {
		t.Fatalf("ssh with the registered key: %v\n%s", err, out)
	}
	h.g.setHostKey(testkeys.SSHPublicKey(t))
	out, err = ssh()
	// The KnownHostsCommand refuses to vouch for the key, so ssh knows no key for the
	// host and (StrictHostKeyChecking yes) does not connect.
	if err == nil || strings.Contains(out, "pinned-ok") || !strings.Contains(out, "refusing to connect") || !strings.Contains(out, "KnownHostsCommand failed") {
		t.Fatalf("ssh with a changed host key: %v\n%s; want the known-hosts check to refuse", err, out)
	}
}
