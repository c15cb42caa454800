// Command openshell-sandbox is the supervisor that runs inside every sandbox. In a VM
// the same static binary is the guest's PID 1 (/init): it assembles the root, then
// runs the supervisor with its configuration read from the vsock bootstrap port.
//
//	openshell-sandbox [--bootstrap env|vsock]   run the supervisor
//	openshell-sandbox sftp-server               serve SFTP on stdin/stdout (re-exec'd as the sandbox user)
//	openshell-sandbox tar-server WRITABLE       serve one upload/download tar stream (re-exec'd as the sandbox user)
//	openshell-sandbox confine-exec --spec FD -- CMD…   confine this process, then exec CMD (started by the supervisor)
//	openshell-sandbox init                      as PID 1 in a VM (also the default for a PID 1 without OPENSHELL_ENDPOINT)
//	openshell-sandbox install DEST              copy this binary to DEST (a Kubernetes init container: the image has no cp)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/openshell/openshell/guest"
	"github.com/openshell/openshell/guest/channel"
	"github.com/openshell/openshell/guest/channel/wire"
	"github.com/openshell/openshell/internal/atomicfile"
	"github.com/openshell/openshell/internal/grpcopts"
	"github.com/openshell/openshell/supervisor"
	"github.com/openshell/openshell/supervisor/bootstrap"
	"github.com/openshell/openshell/supervisor/confine"
	"github.com/openshell/openshell/supervisor/sshd"
	"github.com/openshell/openshell/supervisor/transfer"
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
	if len(os.Args) > 1 && os.Args[1] == transfer.ServerArg {
		os.Exit(transfer.Main(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "install" {
		os.Exit(installSelf(os.Args[2:]))
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

// installSelf copies the running binary to the one path in args, executable by all
// (the sandbox container mounts its directory read-only and runs it as root).
func installSelf(args []string) int {
	if len(args) != 1 || args[0] == "" {
		fmt.Fprintln(os.Stderr, "usage: openshell-sandbox install DEST")
		return 2
	}
	self, err := os.Executable()
	if err == nil {
		var data []byte
		if data, err = os.ReadFile(self); err == nil {
			err = atomicfile.WriteFile(args[0], data, 0o555)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "openshell-sandbox install:", err)
		return 1
	}
	return 0
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
		re   *supervisor.Reidentify // VM guests: a copy restored from a snapshot becomes its own sandbox
		// clock is what a VM guest made of its clock at the bootstrap.
		clock clockStep
		// logger is set once the configuration says the level; Reidentify.Apply runs later.
		logger *slog.Logger
	)
	switch mode {
	case "env":
		cfg, err = bootstrap.FromEnv(os.Getenv)
		if os.Geteuid() == 0 {
			// A container: the agent gets its own network namespace and confinement.
			opts.Network, opts.Confine = supervisor.NetworkNamespace, true
		}
		if err == nil {
			// A container's gateway socket has a bulk socket beside it for transfers.
			opts.BulkOpen = transfer.GatewaySocketBulk(cfg.Endpoint, cfg.LoadToken)
		}
	case "vsock":
		// What needs no sandbox is done while the host has no configuration for this
		// VM yet (a warm pool's VM waits here until a sandbox claims it).
		// The VM's supervisor runs in the image's root, where the CA bundle goes.
		opts.Warm = supervisor.Prewarm(filepath.Join("/", supervisor.CABundlePath), 2)
		var h handshake
		h, err = fetchVsock(ctx)
		cfg = h.cfg
		secret := h.secret
		clock = setClockToHost(h.hostClock)
		// The runner admits only connections that open with this boot's instance
		// secret, which the agent never sees: it cannot reach these ports itself.
		opts.Dial = func(ctx context.Context, _ string) (net.Conn, error) {
			return channel.DialHostAs(ctx, channel.PortGateway, secret)
		}
		// A VM guest has no NIC: egress goes through the host runner over vsock.
		opts.Network, opts.Confine = supervisor.NetworkVM, true
		opts.EgressOpen = func(ctx context.Context) (net.Conn, error) {
			return channel.DialHostAs(ctx, channel.PortEgress, secret)
		}
		// Two subscriptions: the identity watcher's, and the gateway session's (it
		// redials at once after a restore rather than at the end of its backoff).
		opts.HostReturns = channel.HostReturns(ctx)
		re = &supervisor.Reidentify{
			Fetch:   func(ctx context.Context) ([]byte, error) { return channel.FetchNewIdentity(ctx, secret) },
			Returns: channel.HostReturns(ctx),
			Apply: func(id *supervisor.Identity) {
				// What the old identity's run left (its main process's children, a
				// daemon that left the group) carries the source sandbox's environment
				// and work: none of it may run on into this sandbox.
				if guest.IsPID1() {
					if left, err := guest.EndOtherProcesses(5 * time.Second); err != nil || left > 0 {
						logger.Warn("the old identity's processes did not all end", "left", left, "err", err)
					}
				}
				// Between runs: no dialer of the old run is left to read secret.
				if s, perr := wire.ParseSecret(id.Config.InstanceSecret); perr == nil {
					secret = s
				}
				if id.Config.SandboxName != "" {
					_ = syscall.Sethostname([]byte(id.Config.SandboxName))
				}
			},
		}
		opts.BulkOpen = func(ctx context.Context) (net.Conn, error) {
			return channel.DialHostAs(ctx, channel.PortBulk, secret)
		}
	default:
		err = fmt.Errorf("--bootstrap %q: use env or vsock", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "openshell-sandbox:", err)
		return 2
	}
	logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel(cfg.LogLevel)}))
	opts.Logger = logger
	// What happens before the supervisor's run reaches the console now and the
	// sandbox's logs once the run has its shipper.
	early := &earlyRecords{next: logger.Handler()}
	elog := slog.New(early)
	switch {
	case clock.err != nil:
		elog.Warn("cannot set the clock to the host's", "err", clock.err)
	case clock.set:
		elog.Info("clock set to the host's", "was_behind", clock.behind.Round(time.Microsecond))
	}
	if mode == "vsock" && cfg.SandboxName != "" {
		// The guest kernel boots without a hostname ("(none)"); a container gets one
		// from its engine. Name the VM after its sandbox, as a user would expect.
		if err := syscall.Sethostname([]byte(cfg.SandboxName)); err != nil {
			elog.Warn("cannot set the hostname", "err", err)
		}
	}
	opts.Early = early.recs
	if re != nil {
		err = supervisor.RunVM(ctx, cfg, opts, re)
	} else {
		err = supervisor.Run(ctx, cfg, opts)
	}
	if err != nil {
		logger.Error("supervisor failed", "err", err)
		return 1
	}
	return 0
}

// fetchVsock reads the bootstrap Config from the host, retrying while the host side
// is not listening yet or a transfer fails. The host serves it once per boot: the
// guest acknowledges a document it could decode and goes on only when the host has
// confirmed that the bootstrap port is closed (until then the document could still
// be served to someone else, so it fetches again).
func fetchVsock(ctx context.Context) (handshake, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var (
		lastErr error
		held    handshake // acknowledged, but the close was not confirmed
		heldCtx = ctx     // bounds the attempts after that
	)
	for {
		h, err := fetchOnce(heldCtx)
		if err == nil {
			return h, nil
		}
		lastErr = err
		if h.cfg != nil && held.cfg == nil {
			held = h
			var c context.CancelFunc
			heldCtx, c = context.WithTimeout(ctx, 5*time.Second)
			defer c()
		}
		if errors.Is(err, errNoInstanceSecret) {
			// A runner that mints no secret cannot admit this guest's sessions.
			return handshake{}, err
		}
		select {
		case <-heldCtx.Done():
			if held.cfg != nil {
				// The host took the acknowledgement (its port no longer answers) but
				// its confirmation was lost: the config in hand is this boot's.
				fmt.Fprintln(os.Stderr, "openshell-sandbox: the host did not confirm the bootstrap port closed; going on with the acknowledged config:", lastErr)
				return held, nil
			}
			return handshake{}, fmt.Errorf("bootstrap over vsock port %d: %w", channel.PortBootstrap, lastErr)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

var errNoInstanceSecret = errors.New("the bootstrap config has no valid instance_secret (the VM runner mints one per boot; update openshell-driver-vm)")

// handshake is what the bootstrap handshake gave the guest.
type handshake struct {
	cfg       *bootstrap.Config
	secret    wire.Secret // cfg's instance secret
	hostClock time.Time   // the host's clock at its confirmation (zero: none sent)
}

// fetchOnce runs one bootstrap handshake. It returns the decoded config also when
// only the host's closing confirmation failed.
func fetchOnce(ctx context.Context) (handshake, error) {
	var h handshake
	conn, err := channel.DialHost(ctx, channel.PortBootstrap)
	if err != nil {
		return h, err
	}
	defer conn.Close()
	// No deadline on the document: the runner of a warm pool's VM holds this
	// connection open until a sandbox claims the VM, which may be hours away. A runner
	// that goes away closes the connection, and the fetch is tried again.
	cfg, err := bootstrap.Read(conn)
	if err != nil {
		return h, err
	}
	secret, err := wire.ParseSecret(cfg.InstanceSecret)
	if err != nil {
		return h, fmt.Errorf("bootstrap over vsock port %d: %w: %w", channel.PortBootstrap, errNoInstanceSecret, err)
	}
	h.cfg, h.secret = cfg, secret
	// The supervisor's start-up (up to the document in hand) ends here; the host
	// learns the guest's steps with the acknowledgement.
	guest.Stamp("supervisor")
	var tl *wire.GuestTimeline
	if t, ok := guest.Timeline(); ok {
		tl = &t
	}
	h.hostClock, err = channel.AckBootstrapTimeline(conn, 10*time.Second, tl)
	return h, err
}

// clockStep is the outcome of setting the guest's clock to the host's.
type clockStep struct {
	set    bool
	behind time.Duration // how far the guest's clock was behind the host's (negative: ahead)
	err    error
}

// setClockToHost sets the guest's clock to the host's (sent with the bootstrap's
// confirmation) when this process is the VM's init: the guest kernel took the time
// from the VM's real-time clock in whole seconds at boot, and a pooled VM may have
// booted long before its claim. Sandbox logs interleave with the gateway's by these
// times. A zero hostClock (an older runner sends none) leaves the clock alone.
func setClockToHost(hostClock time.Time) clockStep {
	if hostClock.IsZero() || !guest.IsPID1() {
		return clockStep{}
	}
	behind, err := supervisor.SetClock(hostClock)
	if err != nil {
		return clockStep{err: err}
	}
	return clockStep{set: true, behind: behind}
}

// earlyRecords is the handler of the lines logged before the supervisor's run: it
// writes them through next and keeps those at Info and above (supervisor.Options.Early
// ships them, as the run's own lines are, whatever the console's level).
type earlyRecords struct {
	next slog.Handler
	recs []slog.Record
}

func (h *earlyRecords) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || h.next.Enabled(ctx, l)
}

func (h *earlyRecords) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelInfo {
		h.recs = append(h.recs, r.Clone())
	}
	if h.next.Enabled(ctx, r.Level) {
		return h.next.Handle(ctx, r)
	}
	return nil
}

// The early lines carry their attributes themselves: no logger derived from this one
// keeps lines.
func (h *earlyRecords) WithAttrs(as []slog.Attr) slog.Handler { return h.next.WithAttrs(as) }
func (h *earlyRecords) WithGroup(name string) slog.Handler    { return h.next.WithGroup(name) }
