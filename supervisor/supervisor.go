// Package supervisor is the process that runs inside every sandbox, whatever driver
// started it: it launches the main process as the sandbox's account, serves SSH on a
// private Unix socket, keeps the session to the gateway (relays, exit report, logs).
//
// The account (resolveUser) is the start policy's process.run_as_user and
// process.run_as_group when they name one (looked up in the sandbox's /etc/passwd
// and /etc/group; a missing one fails the start), else the image's USER, else a
// "sandbox" user the supervisor creates. The main process, every exec/ssh session
// and the SFTP server run as it for the sandbox's whole life: a later policy version
// that asks for another account has only its network rules applied and is reported
// to the gateway as not applied.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/metrics"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/internal/defaultpath"
	"github.com/openshell/openshell/internal/procstat"
	"github.com/openshell/openshell/supervisor/bootstrap"
	"github.com/openshell/openshell/supervisor/confine"
	"github.com/openshell/openshell/supervisor/credentials"
	"github.com/openshell/openshell/supervisor/egress"
	"github.com/openshell/openshell/supervisor/mainproc"
	"github.com/openshell/openshell/supervisor/policy"
	"github.com/openshell/openshell/supervisor/reaper"
	"github.com/openshell/openshell/supervisor/sandboxuser"
	"github.com/openshell/openshell/supervisor/session"
	"github.com/openshell/openshell/supervisor/sshd"
	"github.com/openshell/openshell/supervisor/transfer"
)

// Options are the parts of a supervisor that differ between environments.
type Options struct {
	// Dial replaces the TCP dial to the gateway; addr is the endpoint's host:port. The
	// VM mode dials its vsock gateway port whatever the address (TLS ServerName still
	// comes from the endpoint host). nil = TCP.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// RunDir holds materialised secrets (default /run/openshell).
	RunDir string
	// Root is the sandbox's root for /etc/passwd and friends (default /).
	Root string
	// SandboxDir is the default working directory (default /sandbox).
	SandboxDir string
	// SelfExe re-executes this binary as "sftp-server" (default /proc/self/exe).
	SelfExe string
	// ReapOrphans runs the central wait loop; default: when this process is PID 1.
	ReapOrphans *bool
	// StopGrace bounds the wait for the main process after SIGTERM (default 8 s).
	StopGrace time.Duration
	// Logger is the base logger; its records at Info and above are also shipped.
	Logger *slog.Logger
	// Early are records logged (to the console) before Run, when no shipper existed
	// yet (a VM guest's clock step, its hostname): Run ships those at Info and above
	// first, with their own times and the sandbox's id.
	Early []slog.Record
	// Network is how the sandbox's programs reach the egress proxy (default: the
	// proxy on loopback, announced through the environment only).
	Network NetworkMode
	// EgressOpen opens a stream to the host runner's egress port (NetworkVM).
	EgressOpen func(ctx context.Context) (net.Conn, error)
	// BulkOpen opens a bulk stream to the host runner (NetworkVM): file transfers'
	// bytes skip gRPC in the guest (session.Config.DialBulk).
	BulkOpen func(ctx context.Context) (net.Conn, error)
	// HostReturns delivers a value when the VM's host end came back after it was gone
	// (a restore): the gateway session redials at once (session.Config.HostReturns).
	HostReturns <-chan struct{}
	// Warm is the start-up work done before the configuration arrived (Prewarm);
	// nil = none.
	Warm *Warm
	// Confine starts the main process, SSH sessions and SFTP through the confinement
	// helper (SelfExe confine-exec: Landlock, seccomp, no capabilities, the sandbox
	// user). Needs root and a SelfExe that dispatches confine.Subcommand.
	Confine bool
}

// SFTPServerArg is the argument that makes the binary serve SFTP on stdin/stdout.
const SFTPServerArg = "sftp-server"

// defaultSelfExe is how the supervisor re-executes itself (Options.SelfExe):
// /proc/self/exe, not os.Executable(): in a VM this binary was /init in the
// initramfs, a path that no longer exists after the switch to the image root; the
// magic link still executes the same file.
const defaultSelfExe = "/proc/self/exe"

// secretEnv are variables the supervisor consumes and the sandbox's processes must
// not see (the token, its file, TLS material) or need not (the spec).
var secretEnv = []string{
	bootstrap.EnvToken, bootstrap.EnvTokenFile, bootstrap.EnvTLSCA, bootstrap.EnvTLSCert, bootstrap.EnvTLSKey,
	bootstrap.EnvMainProcessSpec, bootstrap.EnvPolicyFile, bootstrap.EnvImageUser, bootstrap.EnvImageWorkdir,
}

// SandboxEnv builds the environment of the main process and SSH sessions: the
// supervisor's own environment (the image's ENV in containers) without secrets, the
// user's HOME/USER/SHELL, a default PATH, TERM when a TTY is used, then spec env.
func SandboxEnv(base []string, u *sandboxuser.User, extra map[string]string) []string {
	env := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := env[k]; !ok {
			order = append(order, k)
		}
		env[k] = v
	}
	for _, kv := range base {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			continue
		}
		skip := false
		for _, s := range secretEnv {
			if k == s {
				skip = true
			}
		}
		if !skip {
			set(k, v)
		}
	}
	for _, kv := range u.Env() {
		k, v, _ := strings.Cut(kv, "=")
		set(k, v)
	}
	if env["PATH"] == "" {
		set("PATH", defaultpath.PATH)
	}
	for k, v := range extra {
		set(k, v)
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+env[k])
	}
	return out
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// resolveUser picks the account every program of the sandbox runs as (the main
// process, exec/ssh sessions, the SFTP server) and the working directory:
//
//   - process.run_as_user naming an account (a name or numeric uid other than the
//     default "sandbox"): that account from the sandbox's /etc/passwd, which must
//     have it; the image's USER is then ignored.
//   - otherwise (empty or "sandbox", what policy.Default fills in): the image's USER
//     when it is not root, else the "sandbox" user, added to /etc/passwd and
//     /etc/group when the image lacks it.
//   - process.run_as_group naming a group (other than "sandbox"): that group from
//     /etc/group replaces the account's primary group; otherwise the account's
//     primary group. Supplementary groups are always the account's memberships in
//     /etc/group.
//
// An account or group the image lacks, or one that resolves to uid/gid 0, fails the
// start with an error naming the policy field and the fix. A supervisor that is not
// root (tests) runs everything as itself, and refuses a policy account other than
// its own identity rather than silently ignoring it.
func resolveUser(cfg *bootstrap.Config, o Options, proc policy.Process) (*sandboxuser.User, string, error) {
	db := sandboxuser.DB{Root: o.Root}
	dir := cfg.ImageWorkdir
	if dir == "" {
		dir = o.SandboxDir
	}
	named := !sandboxuser.IsDefault(proc.RunAsUser)
	group := proc.RunAsGroup
	if sandboxuser.IsDefault(group) {
		group = ""
	}
	if os.Geteuid() != 0 {
		u := sandboxuser.Current(db)
		if named || group != "" {
			base := u
			if named {
				base = nil
			}
			want, err := policyAccount(db, proc.RunAsUser, group, base)
			if err != nil {
				return nil, "", err
			}
			if want.UID != u.UID || want.GID != u.GID {
				return nil, "", fmt.Errorf("supervisor: the policy's process section asks for %s (uid %d, gid %d), but the supervisor runs as uid %d, not root, and cannot switch accounts: run it as root or drop process.run_as_user/run_as_group",
					want.Name, want.UID, want.GID, u.UID)
			}
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, "", fmt.Errorf("supervisor: create working directory %s: %w", dir, err)
		}
		return u, dir, nil
	}
	shell := "/bin/sh"
	if exists(filepath.Join(o.Root, "bin/bash")) {
		shell = "/bin/bash"
	}
	var u *sandboxuser.User
	var err error
	switch {
	case named:
		u, err = policyAccount(db, proc.RunAsUser, group, nil)
	case cfg.ImageUser != "" && !sandboxuser.IsRoot(cfg.ImageUser):
		u, err = db.Resolve(cfg.ImageUser)
	default:
		u, err = db.EnsureDefault(o.SandboxDir, shell)
		if err != nil {
			// A read-only /etc must not make the sandbox unusable: run as the numeric
			// uid without an account entry, as container runtimes do.
			slog.Warn("could not add the sandbox user to /etc/passwd; running as uid 1000 without an entry", "err", err)
			u, err = &sandboxuser.User{Name: sandboxuser.DefaultName, UID: 1000, GID: 1000, Home: o.SandboxDir, Shell: shell}, nil
		}
	}
	if err == nil && !named && group != "" {
		u, err = policyAccount(db, "", group, u)
	}
	if err != nil {
		return nil, "", err
	}
	if cfg.ImageWorkdir == "" {
		// /sandbox belongs to the sandbox user; an image's WORKDIR is left as built.
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, "", fmt.Errorf("supervisor: create %s: %w", dir, err)
		}
		if err := os.Chown(dir, int(u.UID), int(u.GID)); err != nil {
			return nil, "", fmt.Errorf("supervisor: chown %s to %s: %w", dir, u.Name, err)
		}
	}
	if u.Home == "" || u.Home == "/" || !exists(u.Home) {
		u.Home = dir
	}
	return u, dir, nil
}

// policyAccount resolves the policy's process section: the account user (when base
// is nil) or base with its primary group replaced by group (when group is set). The
// errors name the policy field, the missing account and the fix.
func policyAccount(db sandboxuser.DB, user, group string, base *sandboxuser.User) (*sandboxuser.User, error) {
	var u *sandboxuser.User
	var err error
	if base == nil {
		u, err = db.ResolveRunAs(user, group)
	} else {
		u = base
		if group != "" {
			u, err = db.WithGroup(base, group)
		}
	}
	if err == nil {
		return u, nil
	}
	var ae *sandboxuser.AccountError
	if !errors.As(err, &ae) {
		return nil, fmt.Errorf("supervisor: resolve the policy's process section: %w", err)
	}
	field, value := "process.run_as_user", user
	if ae.Kind == "group" {
		field, value = "process.run_as_group", group
	}
	switch {
	case errors.Is(err, sandboxuser.ErrNoAccount):
		return nil, fmt.Errorf("supervisor: policy %s %q: %w: add the %s to the sandbox image (e.g. a useradd/groupadd line in its Dockerfile) or set %s to one the image has",
			field, value, err, ae.Kind, field)
	case ae.PrimaryRoot:
		return nil, fmt.Errorf("supervisor: policy %s %q: %w: the agent must not run with the root group; set process.run_as_group to an unprivileged group",
			field, value, err)
	case errors.Is(err, sandboxuser.ErrRootAccount):
		return nil, fmt.Errorf("supervisor: policy %s %q: %w: the agent must not run as root; name an unprivileged %s",
			field, value, err, ae.Kind)
	}
	return nil, fmt.Errorf("supervisor: policy %s %q: %w", field, value, err)
}

// installCA creates the sandbox CA, writes the bundle the agent trusts and returns
// the credential store of the providers. The CA exists even without providers:
// endpoints with tls: terminate (L7 rules, access presets on HTTPS) need the proxy
// to terminate TLS with a CA the agent already trusts, and a live policy update may
// add such an endpoint.
func installCA(root, sandboxID string, providers []credentials.Provider) (*credentials.Store, string, error) {
	ca, err := credentials.NewCA(sandboxID)
	if err != nil {
		return nil, "", err
	}
	store, err := credentials.New(ca, providers)
	if err != nil {
		return nil, "", err
	}
	caFile, err := writeCABundle(root, ca)
	if err != nil {
		return nil, "", err
	}
	return store, caFile, nil
}

// sessionFirst bounds how long the start-up past the session's opening (credentials,
// egress proxy, SSH server, main process) waits for the session to come up: a gateway
// that is away does not hold the sandbox's main process for longer.
const sessionFirst = 2 * time.Second

// Run runs the supervisor until ctx ends. The main process is started once: a
// gateway reconnect never restarts it. When it exits the exit is reported and the
// supervisor keeps serving (exec, logs) until it is stopped. An error that ends Run
// once the gateway connection exists (e.g. a policy account the image lacks) is
// also shipped to the gateway's sandbox logs, so `openshell sandbox logs` shows it.
func Run(ctx context.Context, cfg *bootstrap.Config, o Options) (retErr error) {
	steps := newStartupSteps()
	warmUp := o.Warm.summary()
	o.Warm.stop()
	if err := cfg.Validate(); err != nil {
		return err
	}
	if o.RunDir == "" {
		o.RunDir = "/run/openshell"
	}
	if o.Root == "" {
		o.Root = "/"
	}
	if o.SandboxDir == "" {
		o.SandboxDir = "/sandbox"
	}
	if o.StopGrace == 0 {
		o.StopGrace = 8 * time.Second // inside the container engine's 10 s stop timeout
	}
	if o.SelfExe == "" {
		o.SelfExe = defaultSelfExe
	}
	reapOrphans := os.Getpid() == 1
	if o.ReapOrphans != nil {
		reapOrphans = *o.ReapOrphans
	}
	// A token file the driver handed in may be readable by the agent (hideTokenFile);
	// one materialised here from an inline token is root-only already.
	handedTokenFile := cfg.Token == "" && cfg.TokenFile != ""
	if err := bootstrap.Materialize(cfg, filepath.Join(o.RunDir, "secrets")); err != nil {
		return err
	}
	if _, err := cfg.LoadToken(); err != nil {
		return fmt.Errorf("supervisor: %w (the driver must provide the sandbox token)", err)
	}

	cc, err := session.Dial(session.DialOptions{
		Endpoint: cfg.Endpoint, CAPEM: cfg.CAPEM, CAFile: cfg.CAFile, Dial: o.Dial, Token: cfg.LoadToken,
	})
	if err != nil {
		return err
	}
	defer cc.Close()
	// Connect now, not at the first call: the connection comes up while the rest of
	// the start-up runs up to it.
	cc.Connect()
	go markTransport(ctx, cc, steps)
	base := o.Logger
	if base == nil {
		// Not slog.Default(): wrapping the default handler and then installing the
		// result as the default makes the log package write into itself.
		base = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	// This boot's identity: the gateway binds the sandbox's session to it. The VM
	// runner mints the secret per boot and serves it once in the bootstrap; where no
	// driver supplies one (containers) it is minted here and kept in memory only.
	identity := session.Identity{InstanceID: session.NewInstanceID(), Secret: cfg.InstanceSecret}
	if identity.Secret == "" {
		identity.Secret = session.NewInstanceSecret()
	}
	shipper := session.NewShipper(newAPI(cc), cfg.SandboxID, session.ShipperOptions{Identity: &identity})
	log := slog.New(shipper.Handler(base.Handler())).With("sandbox_id", cfg.SandboxID)
	// The supervisor is the process's main: its packages log through the default
	// logger, and their events are shipped too.
	slog.SetDefault(log)
	early := shipper.Handler(slog.DiscardHandler).WithAttrs([]slog.Attr{slog.String("sandbox_id", cfg.SandboxID)})
	for _, r := range o.Early {
		_ = early.Handle(ctx, r)
	}
	shipCtx, stopShip := context.WithCancelCause(context.WithoutCancel(ctx))
	shipDone := make(chan struct{})
	go func() { shipper.Run(shipCtx); close(shipDone) }()
	defer func() {
		// A last flush, bounded by the shipper; none for a run that ends because this
		// guest became another sandbox: the host refuses the old identity's session,
		// and waiting on gRPC to find that out held the copy's start ~170 ms under TCG.
		var cause error
		if errors.Is(context.Cause(ctx), errReidentified) {
			cause = session.ErrNoLastFlush
		}
		stopShip(cause)
		<-shipDone
	}()
	defer func() {
		if retErr != nil {
			// Not through log: the caller prints retErr to stderr already.
			shipper.Add("ERROR", "openshell-sandbox", "sandbox start failed: "+retErr.Error(), nil)
		}
	}()

	// The warm-up's spares were started by a reaper of their own: it is the one (a
	// second would race it for the statuses of the supervisor's children).
	r, warmSpares := o.Warm.takeSpares()
	if r == nil {
		r = reaper.New(reapOrphans)
	}
	defer r.Close()
	if warmSpares != nil {
		defer warmSpares.Close() // unless the launcher took them (it closes them then)
	}

	// Policy: the bootstrap's, else the gateway's, else the default.
	gctx, gcancel := context.WithTimeout(ctx, 15*time.Second)
	gwCfg, err := sandboxConfig(gctx, cc, cfg.SandboxID, true)
	gcancel()
	steps.mark("config")
	// The provider credentials (a round trip to the runner or the gateway, the CA and
	// its bundle) do not depend on the policy, and the SSH server, the egress proxy and
	// the main process wait for them. They load once the session is up (or after
	// sessionFirst without it): until then the session's set-up, which the sandbox's
	// Ready waits for, has the CPU. Loaded beside it (claimed pooled VMs under
	// emulation, the CA and bundle made ahead), they and what follows them took the CPU
	// from it: the session came up 37-62 ms into the start, against 30-40 ms after,
	// and the SSH server 47-76 ms in either way. Not before the session either:
	// alongside the gateway connection's set-up and the config call they delayed the
	// connection (84-116 ms into the start instead of 24-68 ms).
	type credsResult struct {
		store      sandboxCredentials
		caFile     string
		nProviders int
	}
	credsCh := make(chan credsResult, 1)
	credsCtx, credsCancel := context.WithCancel(ctx)
	credsDone := make(chan struct{})
	sessionUp := make(chan struct{})
	var sessionUpOnce sync.Once
	go func() {
		defer close(credsDone)
		select {
		case <-sessionUp:
		case <-time.After(sessionFirst):
		case <-credsCtx.Done():
		}
		var c credsResult
		c.store, c.caFile, c.nProviders = loadCredentials(credsCtx, cc, cfg.SandboxID, o, log)
		credsCh <- c
	}()
	// Run returns only once the load has ended, on every path: a start that fails
	// (a bad policy, an unknown account) must not leave it writing the CA bundle
	// into a sandbox root its caller is already removing.
	defer func() { credsCancel(); <-credsDone }()
	if err != nil {
		log.Warn("the gateway's sandbox config is unavailable; starting with the bootstrap or default policy", "err", err)
	}
	pol, polSrc, err := initialPolicy(cfg, gwCfg)
	if err != nil {
		return err
	}
	compiled, err := policy.Compile(pol)
	if err != nil {
		return fmt.Errorf("supervisor: compile the %s: %w", polSrc, err)
	}
	// The account comes from the start policy and stays for the sandbox's life: the
	// main process cannot change identity, and sessions follow it (policyWatcher
	// reports a later version that asks for another account).
	user, dir, err := resolveUser(cfg, o, pol.Process)
	if err != nil {
		return fmt.Errorf("%w (in the %s)", err, polSrc)
	}
	// Before any program of the sandbox starts (SSH sessions, the main process).
	if handedTokenFile {
		if err := hideTokenFile(cfg, user, o.RunDir, log); err != nil {
			return err
		}
	}
	steps.mark("user")
	env := SandboxEnv(os.Environ(), user, cfg.Main.Env)
	var confSpec *confine.Spec
	if o.Confine {
		if confSpec, err = confineSpec(pol, user, dir); err != nil {
			return err
		}
	}
	// Without a command the sandbox is a scratch shell: the shell the image has runs
	// on a PTY for `openshell-main` attaches, and the sandbox stays up whatever happens
	// to it (an image without any shell, a user typing exit). A given command is the
	// sandbox's purpose: its exit, or its failure to start, is reported.
	keepAlive := len(cfg.Main.Command) == 0
	argv := cfg.Main.Command
	if keepAlive {
		argv = mainproc.DefaultArgv(func(p string) bool { return exists(filepath.Join(o.Root, p)) })
	}
	// A command that cannot start is reported before the session opens, so the
	// sandbox goes from PROVISIONING to ERROR with the reason, never READY first. Only
	// PATH matters here: the proxy and credential variables added below leave it.
	var startErr error
	if !keepAlive {
		_, startErr = mainproc.LookPath(argv[0], env)
	}

	// The session opens now, while the credentials, the egress proxy and the SSH
	// server are set up: the gateway's relays wait until they are (served), and
	// whatever could keep the sandbox from starting was checked above. Its host key
	// was made ahead when a warm-up ran.
	hostKey := o.Warm.takeHostKey()
	if hostKey == nil {
		if hostKey, err = sshd.NewHostKey(); err != nil {
			return err
		}
	}
	var (
		srv    *sshd.Server
		launch *launcher
		served = make(chan struct{})
	)
	ready := func(ctx context.Context) bool {
		select {
		case <-served:
			return true
		case <-ctx.Done():
			return false
		}
	}
	// whenServed waits for the SSH server before a relay is served on c; a relay whose
	// session ended first is closed.
	whenServed := func(ctx context.Context, c net.Conn) bool {
		if ready(ctx) {
			return true
		}
		c.Close()
		return false
	}
	// stepDone marks a start-up step; the profile is logged once, when the session and
	// the SSH server are both up, whichever came last.
	stepDone := func(step string) {
		if steps.mark(step) && steps.complete() {
			log.Info("supervisor start-up steps (ms since the configuration was in hand / of the supervisor's CPU since then)", "steps", steps.String(), "warm_up", warmUp, "gc", steps.gcSince())
		}
	}
	sessCtx, sessCancel := context.WithCancel(ctx)
	var sessWG sync.WaitGroup
	stopSession := func() { sessCancel(); sessWG.Wait() }
	defer stopSession()
	sc, err := session.New(cc, session.Config{
		SandboxID: cfg.SandboxID, InstanceID: identity.InstanceID, InstanceSecret: identity.Secret, HostKey: hostKey.PublicKey(),
		// SSH relays are served in-process on the relay stream (no socket).
		ServeSSH: func(ctx context.Context, c net.Conn) {
			if whenServed(ctx, c) {
				srv.ServeConn(ctx, c)
			}
		},
		ServeTransfer: func(ctx context.Context, c net.Conn, t *pb.TransferRelayTarget) {
			if whenServed(ctx, c) {
				srv.ServeTransfer(ctx, c, t)
			}
		},
		ServeExec: func(ctx context.Context, c net.Conn, t *pb.ExecRelayTarget) {
			if whenServed(ctx, c) {
				srv.ServeExec(ctx, c, t)
			}
		},
		DialTCP: func(ctx context.Context, addr string) (net.Conn, error) {
			if !ready(ctx) {
				return nil, ctx.Err()
			}
			return launch.dialTCP(ctx, addr)
		},
		DialBulk:    o.BulkOpen,
		HostReturns: o.HostReturns,
		OnState: func(up bool) {
			if !up {
				return
			}
			go func() {
				if ready(sessCtx) {
					launch.warm()
				}
			}()
			sessionUpOnce.Do(func() { close(sessionUp) })
			stepDone("session")
		},
	})
	if err != nil {
		return err
	}
	if startErr != nil {
		reportStartFailure(ctx, log, shipper, sc, argv, startErr)
	}
	sessWG.Add(1)
	go func() {
		defer sessWG.Done()
		_ = sc.Run(sessCtx)
	}()

	creds := <-credsCh
	steps.mark("credentials")
	store, caFile, nProviders := creds.store, creds.caFile, creds.nProviders
	var agentCred *syscall.Credential
	if o.Confine {
		agentCred = user.Credential()
	}
	eg, err := startEgress(ctx, o, compiled, store, agentCred, eventShipper(shipper.Add))
	if err != nil {
		return err
	}
	defer eg.close()
	steps.mark("egress")
	env = append(env, egress.ChildEnv(eg.proxyURL, caFile)...)
	if store != nil {
		env = append(env, store.Env()...)
	}
	launch = &launcher{r: r, self: o.SelfExe, n: eg.net, spec: confSpec}
	launch.adopt(warmSpares)
	defer launch.close()
	// The session stops before the proxy and the launcher it serves through do.
	defer stopSession()
	log.Info("policy in force", "source", polSrc, "version", gwCfg.GetVersion(), "rules", len(pol.NetworkPolicies),
		"proxy", eg.proxyURL, "network", o.Network, "confined", o.Confine, "providers", nProviders)
	watcher := &policyWatcher{cc: cc, id: cfg.SandboxID, prx: eg.prx, net: eg.net, version: gwCfg.GetVersion(), log: log,
		reportInitial: gwCfg.GetPolicy() != nil, process: pol.Process, user: user}

	var mainMu sync.Mutex
	var main *mainproc.Main
	var sftpArgv, tarArgv, writable []string
	if user.Credential() != nil {
		sftpArgv, tarArgv = []string{o.SelfExe, SFTPServerArg}, []string{o.SelfExe, transfer.ServerArg}
	}
	if launch.spec != nil { // uploads land only where the agent may write
		writable = append([]string{}, launch.spec.ReadWrite...)
	}
	srv, err = sshd.New(sshd.Config{User: user, Env: env, Dir: dir, Reaper: r, SFTPArgv: sftpArgv, Start: launch.start, HostKey: hostKey,
		TarArgv: tarArgv, Writable: writable,
		Main: func() sshd.MainTarget {
			mainMu.Lock()
			defer mainMu.Unlock()
			if main == nil {
				return nil
			}
			return main
		}})
	if err != nil {
		return err
	}
	close(served)
	stepDone("sshd")
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	menv := env
	if cfg.Main.TTY {
		menv = append(menv, "TERM=xterm-256color")
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		watcher.run(ctx)
	}()

	startMain := func() (*mainproc.Main, error) {
		m, err := mainproc.Start(r, mainproc.Options{Argv: argv, TTY: cfg.Main.TTY, Env: menv, Dir: dir, Cred: user.Credential(),
			Start: launch.start,
			OnLine: func(stream, line string) {
				shipper.Add("INFO", "main", line, map[string]string{"stream": stream})
			}})
		if err != nil {
			return nil, err
		}
		mainMu.Lock()
		main = m
		mainMu.Unlock()
		steps.mark("main")
		log.Info("main process started", "pid", m.Pid(), "argv", argv, "tty", cfg.Main.TTY, "user", user.Name, "uid", user.UID, "gid", user.GID, "dir", dir)
		return m, nil
	}
	current := func() *mainproc.Main {
		mainMu.Lock()
		defer mainMu.Unlock()
		return main
	}
	exitCode := make(chan int, 1)
	switch {
	case keepAlive:
		wg.Add(1)
		go func() {
			defer wg.Done()
			keepShell(ctx, log, argv, startMain)
		}()
	case startErr != nil:
		// Reported above; the sandbox stays up (ERROR) until stopped or deleted.
	default:
		if m, err := startMain(); err != nil {
			reportStartFailure(ctx, log, shipper, sc, argv, err)
		} else {
			go func() { <-m.Done(); exitCode <- m.ExitCode() }()
		}
	}

	select {
	case code := <-exitCode:
		log.Info("main process exited", "exit_code", code)
		if err := sc.ReportExit(ctx, code); err != nil && ctx.Err() == nil {
			log.Error("main process exit not reported", "err", err)
		}
		<-ctx.Done()
	case <-ctx.Done():
		if m := current(); m != nil && errors.Is(context.Cause(ctx), errReidentified) {
			// A restored copy becoming another sandbox: this run's main process is a
			// copy of the source's, which runs on elsewhere; nothing is owed a graceful
			// stop, and a process slow to take SIGTERM would hold the copy's start.
			log.Info("killing the old identity's main process")
			_ = m.SignalGroup(syscall.SIGKILL)
			<-m.Done()
		} else if m != nil {
			log.Info("stopping main process")
			_ = m.Signal(syscall.SIGTERM)
			select {
			case <-m.Done():
			case <-time.After(o.StopGrace):
				_ = m.Signal(syscall.SIGKILL)
				<-m.Done()
			}
		}
	}
	cancel()
	return nil
}

// startupSteps records when each start-up step ended, for one log line once the
// session is up and the sandbox served: the profile of a create after the supervisor
// has its configuration (a warm pool's claim, a cold boot's bootstrap).
type startupSteps struct {
	t0     time.Time
	cpu0   time.Duration // processCPU at t0
	gc0    gcSample
	mu     sync.Mutex
	seen   map[string]bool
	logged bool
	b      strings.Builder
}

func newStartupSteps() *startupSteps {
	return &startupSteps{t0: time.Now(), seen: map[string]bool{}, gc0: readGC(), cpu0: processCPU()}
}

// processCPU is the CPU this process has used (user and system, all threads): under
// emulation a guest's start-up is CPU-bound, and this says how much of a step's time
// was the supervisor's own work rather than waiting or the guest's other processes.
func processCPU() time.Duration { return procstat.RusageCPU(syscall.RUSAGE_SELF) }

// gcSample is the runtime's garbage collection so far: cycles and CPU time.
type gcSample struct {
	cycles uint64
	cpu    float64 // seconds
}

func readGC() gcSample {
	ms := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}, {Name: "/cpu/classes/gc/total:cpu-seconds"}}
	metrics.Read(ms)
	var g gcSample
	if ms[0].Value.Kind() == metrics.KindUint64 {
		g.cycles = ms[0].Value.Uint64()
	}
	if ms[1].Value.Kind() == metrics.KindFloat64 {
		g.cpu = ms[1].Value.Float64()
	}
	return g
}

// gcSince says how much garbage collection the start-up cost: "cycles=N cpu=Xms"
// (the runtime's estimate of the CPU its collector took, on every core).
func (s *startupSteps) gcSince() string {
	now := readGC()
	return fmt.Sprintf("cycles=%d cpu=%dms", now.cycles-s.gc0.cycles, int((now.cpu-s.gc0.cpu)*1000))
}

// mark records that step ended now; it reports false when the step was marked
// before (a reconnect's session, a shell restarted later), which is not recorded.
func (s *startupSteps) mark(step string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen[step] {
		return false
	}
	s.seen[step] = true
	fmt.Fprintf(&s.b, "%s=%d/%d ", step, time.Since(s.t0).Milliseconds(), (processCPU() - s.cpu0).Milliseconds())
	return true
}

// complete reports true once: when both the session and the SSH server are up.
func (s *startupSteps) complete() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.logged || !s.seen["session"] || !s.seen["sshd"] {
		return false
	}
	s.logged = true
	return true
}

func (s *startupSteps) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.TrimSpace(s.b.String())
}

// markTransport marks the "transport" step when cc is first ready (its HTTP/2
// handshake with the gateway done), for the start-up profile.
func markTransport(ctx context.Context, cc *grpc.ClientConn, steps *startupSteps) {
	for st := cc.GetState(); st != connectivity.Shutdown; st = cc.GetState() {
		if st == connectivity.Ready {
			steps.mark("transport")
			return
		}
		if !cc.WaitForStateChange(ctx, st) {
			return
		}
	}
}

// keepShell runs the default shell of a sandbox created without a command until ctx
// ends, starting a fresh one when it exits (after a pause, so a shell that dies at
// once does not spin). A shell that cannot start at all is logged once; the sandbox
// stays Ready for exec and connect either way.
func keepShell(ctx context.Context, log *slog.Logger, argv []string, start func() (*mainproc.Main, error)) {
	const pause = time.Second
	warned := false
	for ctx.Err() == nil {
		m, err := start()
		if err != nil {
			if !warned {
				log.Warn("no default shell for the sandbox; it stays up for exec and connect: "+err.Error(), "argv", argv)
				warned = true
			}
		} else {
			select {
			case <-m.Done():
				log.Info("default shell exited; starting a new one", "exit_code", m.ExitCode())
			case <-ctx.Done():
				return // the caller stops the current shell
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
	}
}

// reportStartFailure ships why the command could not start, then reports exit code
// 127 (the shell's "command not found"): the gateway puts the reason on the Ready
// condition, so `sandbox create` and `sandbox get` say it.
func reportStartFailure(ctx context.Context, log *slog.Logger, shipper *session.Shipper, sc *session.Client, argv []string, err error) {
	log.Error(session.MainStartFailure+err.Error(), "argv", argv)
	fctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	if ferr := shipper.Flush(fctx); ferr != nil {
		log.Warn("start failure not shipped before the exit report", "err", ferr)
	}
	cancel()
	log.Info("main process exited", "exit_code", 127)
	if rerr := sc.ReportExit(ctx, 127); rerr != nil && ctx.Err() == nil {
		log.Error("main process exit not reported", "err", rerr)
	}
}
