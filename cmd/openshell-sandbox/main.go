// Command openshell-sandbox is the supervisor that runs inside every sandbox. In a VM
// the same static binary is the guest's PID 1 (/init): it assembles the root, then
// runs the supervisor with its configuration read from the vsock bootstrap port.
//
//	openshell-sandbox [--bootstrap env|vsock]   run the supervisor
//	openshell-sandbox sftp-server               serve SFTP on stdin/stdout (re-exec'd as the sandbox user)
//	openshell-sandbox confine-exec --spec FD -- CMD…   confine this process, then exec CMD (started by the supervisor)
//	openshell-sandbox init                      as PID 1 in a VM (also the default for a PID 1 without OPENSHELL_ENDPOINT)
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/openshell/openshell/guest"
	"github.com/openshell/openshell/guest/channel"
	"github.com/openshell/openshell/internal/grpcopts"
	"github.com/openshell/openshell/supervisor"
	"github.com/openshell/openshell/supervisor/bootstrap"
	"github.com/openshell/openshell/supervisor/confine"
	"github.com/openshell/openshell/supervisor/sshd"
)

func main() {
	grpcopts.TuneGC()
	// The confinement helper first: it runs between fork and the agent's exec and
	// must not touch anything else (no flags, no logging setup).
	if len(os.Args) > 1 && os.Args[1] == confine.Subcommand {
		err := confine.ExecMain(os.Args[2:], os.Environ())
		fmt.Fprintln(os.Stderr, "openshell-sandbox:", err)
		os.Exit(126)
	}
	if len(os.Args) > 1 && os.Args[1] == supervisor.SFTPServerArg {
		os.Exit(sftpServer())
	}
	if isVMInit() {
		// The VM's init: PID 1 duties first, then the supervisor with vsock bootstrap.
		guest.RunPID1(guest.InitOptions{}, func() int { return run("vsock") })
		return
	}
	fs := flag.NewFlagSet("openshell-sandbox", flag.ExitOnError)
	mode := fs.String("bootstrap", "env", "where the configuration comes from: env (OPENSHELL_* variables) or vsock (the VM bootstrap port)")
	_ = fs.Parse(os.Args[1:])
	os.Exit(run(*mode))
}

// isVMInit tells the VM's /init from a container entrypoint: both are PID 1, but a
// container driver always hands over the configuration in the environment, and the
// kernel starts /init with none (or with "init" as the explicit argument).
func isVMInit() bool {
	if !guest.IsPID1() {
		return false
	}
	if len(os.Args) > 1 {
		return os.Args[1] == "init"
	}
	return os.Getenv(bootstrap.EnvEndpoint) == ""
}

func sftpServer() int {
	if err := sshd.ServeSFTP(struct {
		io.Reader
		io.Writer
	}{os.Stdin, os.Stdout}); err != nil {
		fmt.Fprintln(os.Stderr, "openshell-sandbox sftp-server:", err)
		return 1
	}
	return 0
}

func logLevel(s string) slog.Level {
	switch strings.ToLower(s) {
	case "debug", "trace":
		return slog.LevelDebug
	case "warn", "warning":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

func run(mode string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var (
		cfg  *bootstrap.Config
		err  error
		opts supervisor.Options
	)
	switch mode {
	case "env":
		cfg, err = bootstrap.FromEnv(os.Getenv)
		if os.Geteuid() == 0 {
			// A container: the agent gets its own network namespace and confinement.
			opts.Network, opts.Confine = supervisor.NetworkNamespace, true
		}
	case "vsock":
		cfg, err = fetchVsock(ctx)
		opts.Dial = func(ctx context.Context, _ string) (net.Conn, error) {
			return channel.DialHost(ctx, channel.PortGateway)
		}
		// A VM guest has no NIC: egress goes through the host runner over vsock.
		opts.Network, opts.Confine = supervisor.NetworkVM, true
		opts.EgressOpen = func(ctx context.Context) (net.Conn, error) {
			return channel.DialHost(ctx, channel.PortEgress)
		}
	default:
		err = fmt.Errorf("--bootstrap %q: use env or vsock", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "openshell-sandbox:", err)
		return 2
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel(cfg.LogLevel)}))
	opts.Logger = logger
	if mode == "vsock" && cfg.SandboxName != "" {
		// The guest kernel boots without a hostname ("(none)"); a container gets one
		// from its engine. Name the VM after its sandbox, as a user would expect.
		if err := syscall.Sethostname([]byte(cfg.SandboxName)); err != nil {
			logger.Warn("cannot set the hostname", "err", err)
		}
	}
	if err := supervisor.Run(ctx, cfg, opts); err != nil {
		logger.Error("supervisor failed", "err", err)
		return 1
	}
	return 0
}

// fetchVsock reads the bootstrap Config from the host, retrying while the host side
// is not listening yet.
func fetchVsock(ctx context.Context) (*bootstrap.Config, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var lastErr error
	for {
		conn, err := channel.DialHost(ctx, channel.PortBootstrap)
		if err == nil {
			conn.SetDeadline(time.Now().Add(30 * time.Second))
			cfg, rerr := bootstrap.Read(conn)
			conn.Close()
			if rerr == nil {
				return cfg, nil
			}
			err = rerr
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("bootstrap over vsock port %d: %w", channel.PortBootstrap, lastErr)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
