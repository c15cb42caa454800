package supervisor

// The policy wiring: which policy the sandbox starts with, the egress proxy and the
// agent's network placement, confinement of every program the supervisor starts,
// provider credentials, and live policy updates from the gateway.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/openshell/openshell/api/openshellv1"
	sandboxv1 "github.com/openshell/openshell/api/sandboxv1"
	"github.com/openshell/openshell/supervisor/bootstrap"
	"github.com/openshell/openshell/supervisor/confine"
	"github.com/openshell/openshell/supervisor/credentials"
	"github.com/openshell/openshell/supervisor/egress"
	"github.com/openshell/openshell/supervisor/netns"
	"github.com/openshell/openshell/supervisor/policy"
	"github.com/openshell/openshell/supervisor/reaper"
	"github.com/openshell/openshell/supervisor/sandboxuser"
)

// NetworkMode says how the sandbox's programs reach the network.
type NetworkMode int

const (
	// NetworkProxyOnly serves the egress proxy on loopback and points the programs at
	// it through the environment only: nothing stops a program that ignores it. For
	// tests and a supervisor that is not root.
	NetworkProxyOnly NetworkMode = iota
	// NetworkNamespace (a container, as root) puts the programs in their own network
	// namespace whose only route out is the proxy.
	NetworkNamespace
	// NetworkVM (a VM guest without a NIC) serves the proxy on 127.0.0.1:3128 and
	// sends its upstream connections and name lookups over Options.EgressOpen.
	NetworkVM
)

// ProxyPort is the egress proxy's port in the namespace and VM modes.
const ProxyPort = 3128

// CABundlePath is where the sandbox CA bundle is written (under Options.Root).
const CABundlePath = "etc/openshell/ca-bundle.pem"

// policyPollInterval is how often the gateway is asked for a new policy version.
var policyPollInterval = 2 * time.Second

// sandboxConfig asks the gateway for the sandbox's policy; nil, nil when the gateway
// does not serve it.
func sandboxConfig(ctx context.Context, cc grpc.ClientConnInterface, id string, wait bool) (*sandboxv1.GetSandboxConfigResponse, error) {
	var resp sandboxv1.GetSandboxConfigResponse
	err := cc.Invoke(ctx, pb.OpenShell_GetSandboxConfig_FullMethodName, &sandboxv1.GetSandboxConfigRequest{SandboxId: id}, &resp, grpc.WaitForReady(wait))
	if status.Code(err) == codes.Unimplemented {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &resp, nil
}

// initialPolicy picks the policy the sandbox starts with: the bootstrap's YAML (or
// file), else the gateway's spec.policy, else the restrictive default. A policy that
// does not parse is an error: starting with another policy than the one asked for
// would be a surprise in either direction.
func initialPolicy(cfg *bootstrap.Config, gw *sandboxv1.GetSandboxConfigResponse) (*policy.Policy, string, error) {
	data := cfg.PolicyYAML
	src := "bootstrap policy"
	if len(data) == 0 && cfg.PolicyFile != "" {
		b, err := os.ReadFile(cfg.PolicyFile)
		if err != nil {
			return nil, "", fmt.Errorf("supervisor: read policy file %s: %w (the driver must mount it)", cfg.PolicyFile, err)
		}
		data, src = b, "policy file "+cfg.PolicyFile
	}
	if len(data) > 0 {
		p, err := policy.Parse(data)
		if err != nil {
			return nil, "", fmt.Errorf("supervisor: %s: %w", src, err)
		}
		return p, src, nil
	}
	if gw.GetPolicy() != nil {
		p, err := policy.FromProto(gw.GetPolicy())
		if err != nil {
			return nil, "", fmt.Errorf("supervisor: the gateway's policy version %d: %w", gw.GetVersion(), err)
		}
		return p, "gateway policy", nil
	}
	return policy.Default(), "default policy", nil
}

// fetchProviders reads the sandbox's provider credentials, retrying while the gateway
// is unreachable (up to ~20 s); a gateway without the RPC means no providers.
func fetchProviders(ctx context.Context, cc grpc.ClientConnInterface, id string) ([]credentials.Provider, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	c := pb.NewOpenShellClient(cc)
	for {
		resp, err := c.GetSandboxProviderEnvironment(ctx, &pb.GetSandboxProviderEnvironmentRequest{SandboxId: id, SupportsStaticCredentialBindings: true}, grpc.WaitForReady(true))
		switch status.Code(err) {
		case codes.OK:
			return credentials.ProvidersFromEnvironment(resp)
		case codes.Unimplemented, codes.NotFound:
			return nil, nil
		case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.ResourceExhausted:
			// The session is not up yet: retry.
		default:
			return nil, fmt.Errorf("supervisor: fetch provider credentials: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("supervisor: fetch provider credentials: %w", err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// egressState is the running proxy and where the programs run.
type egressState struct {
	prx      *egress.Proxy
	net      *netns.Net // nil unless NetworkNamespace
	proxyURL string
	store    sandboxCredentials
	served   chan struct{} // closed when Serve returned
}

func (e *egressState) close() {
	if e.prx != nil {
		_ = e.prx.Close()
		<-e.served
	}
	if e.net != nil {
		_ = e.net.Close()
	}
}

// startEgress starts the proxy for the mode in o; ship receives every decision.
func startEgress(ctx context.Context, o Options, c *policy.Compiled, store sandboxCredentials, agent *syscall.Credential, ship func(egress.Event)) (*egressState, error) {
	st := &egressState{store: store}
	cfg := egress.Config{Policy: c, OnEvent: ship}
	if store != nil {
		cfg.Credentials = store
	}
	var addr string
	switch o.Network {
	case NetworkNamespace:
		n, err := netns.New(netns.Config{ProxyPort: ProxyPort})
		if err != nil {
			return nil, fmt.Errorf("supervisor: the sandbox network namespace: %w (the container needs CAP_NET_ADMIN and CAP_SYS_ADMIN)", err)
		}
		st.net = n
		addr = n.ProxyAddr().String()
		cfg.Identifier = &egress.ProcIdentifier{InNetNS: n.Do}
		if agent != nil && os.Geteuid() == 0 {
			cfg.Identifier = &asAgent{inner: cfg.Identifier, uid: int(agent.Uid), gid: int(agent.Gid)}
		}
		cfg.InternalPrefixes = []netip.Prefix{netip.PrefixFrom(n.ProxyAddr().Addr(), 30).Masked()}
	case NetworkVM:
		if o.EgressOpen == nil {
			return nil, errors.New("supervisor: Options.EgressOpen is nil in VM network mode: pass the vsock dialer of the runner's egress port")
		}
		addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ProxyPort))
		cfg.Dial = egress.RunnerDialer(o.EgressOpen)
		cfg.Resolver = egress.RunnerResolver{Open: o.EgressOpen}
		// Requests of terminated tunnels go to the runner, which holds the values.
		cfg.OriginateTLS = egress.RunnerOriginator(o.EgressOpen)
	default:
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		st.close()
		return nil, fmt.Errorf("supervisor: egress proxy listen on %s: %w", addr, err)
	}
	prx, err := egress.New(cfg)
	if err != nil {
		ln.Close()
		st.close()
		return nil, err
	}
	st.prx = prx
	st.proxyURL = "http://" + ln.Addr().String()
	st.served = make(chan struct{})
	go func() {
		defer close(st.served)
		if err := prx.Serve(ctx, ln); err != nil && ctx.Err() == nil {
			slog.Error("egress proxy stopped", "err", err)
		}
	}()
	return st, nil
}

// asAgent identifies clients with the filesystem identity of the agent's user. A
// container engine grants the supervisor no CAP_SYS_PTRACE, and without it root may
// not read another user's /proc/PID/fd and exe links; the agent's own uid may.
type asAgent struct {
	inner    egress.Identifier
	uid, gid int
}

func (a *asAgent) Identify(c net.Conn) (egress.Identity, error) {
	// setfsuid acts on this thread only: keep the lookup on it.
	runtime.LockOSThread()
	euid, egid := os.Geteuid(), os.Getegid()
	unix.Setfsgid(a.gid)
	unix.Setfsuid(a.uid)
	id, err := a.inner.Identify(c)
	unix.Setfsuid(euid)
	unix.Setfsgid(egid)
	// Setfsuid(-1) changes nothing and returns the current value: only a thread
	// that is back to the supervisor's identity may be reused by the runtime.
	if cur, _ := unix.SetfsuidRetUid(-1); cur == euid {
		if g, _ := unix.SetfsgidRetGid(-1); g == egid {
			runtime.UnlockOSThread()
		}
	}
	return id, err
}

// eventShipper turns proxy decisions into shipped log lines: denials at WARN so that
// `openshell sandbox logs` shows them.
func eventShipper(add func(level, target, msg string, fields map[string]string)) func(egress.Event) {
	return func(e egress.Event) {
		level := "INFO"
		if e.Action == "deny" || e.Action == "error" || e.Action == "audit" {
			level = "WARN"
		}
		add(level, "egress", e.String(), map[string]string{
			"action": e.Action, "host": e.Host, "port": strconv.Itoa(e.Port), "binary": e.Binary, "rule": e.Rule,
		})
	}
}

// launcher starts every program the supervisor runs for the sandbox (main process,
// SSH sessions, SFTP): through the confinement helper when spec is set, inside the
// sandbox's network namespace when n is set.
type launcher struct {
	r    *reaper.Reaper
	self string
	spec *confine.Spec
	n    *netns.Net

	// spares holds a confinement helper started ahead of need (see warm); nil
	// before warm and after close.
	spareMu sync.Mutex
	spares  *confine.Spares[*reaper.Proc]
	closed  bool
}

// warm keeps a spare confinement helper from now on: a program then skips the
// helper's start (the supervisor binary's own start-up, most of an exec's time in
// a VM guest). Called once the session is up, so that the spare's start does not
// compete with the sandbox's own.
func (l *launcher) warm() {
	if l.spec == nil {
		return
	}
	l.spareMu.Lock()
	defer l.spareMu.Unlock()
	if l.closed {
		return
	}
	if l.spares == nil {
		l.spares = &confine.Spares[*reaper.Proc]{Self: l.self, Start: l.startHere, Kill: killSpare}
	}
	l.spares.Fill()
}

// killSpare ends a spare that did not answer its hand-over.
func killSpare(p *reaper.Proc) { _ = p.Signal(syscall.SIGKILL) }

// adopt takes the spares a warm-up started (nil: none): they serve this launcher's
// first programs when they were started as it would start them (confined, in the
// supervisor's own network namespace, from the same binary). From then on one spare
// is kept, as warm keeps it.
func (l *launcher) adopt(sp *confine.Spares[*reaper.Proc]) {
	if sp == nil || l.spec == nil || l.n != nil || l.self != defaultSelfExe {
		return
	}
	sp.SetKeep(1)
	l.spareMu.Lock()
	l.spares = sp
	l.spareMu.Unlock()
}

// close lets the spare go (it exits when its socket closes) and starts no more.
func (l *launcher) close() {
	l.spareMu.Lock()
	sp := l.spares
	l.spares, l.closed = nil, true
	l.spareMu.Unlock()
	if sp != nil {
		sp.Close()
	}
}

func (l *launcher) start(cmd *exec.Cmd) (*reaper.Proc, error) {
	l.spareMu.Lock()
	sp := l.spares
	l.spareMu.Unlock()
	if l.spec != nil && sp != nil {
		if p, ok, err := sp.Run(*l.spec, cmd); ok {
			return p, err
		}
	}
	c := cmd
	if l.spec != nil {
		// Background: the reaper, not exec's context watcher, owns the process.
		cc, err := confine.Command(context.Background(), l.self, *l.spec, cmd.Args)
		if err != nil {
			return nil, err
		}
		defer cc.ExtraFiles[0].Close()
		cc.Env, cc.Dir, cc.Stdin, cc.Stdout, cc.Stderr = cmd.Env, cmd.Dir, cmd.Stdin, cmd.Stdout, cmd.Stderr
		if cmd.SysProcAttr != nil {
			sp := *cmd.SysProcAttr
			sp.Credential = nil // the helper switches identity itself, after Landlock
			cc.SysProcAttr = &sp
		}
		c = cc
	}
	return l.startHere(c)
}

// startHere starts c under the reaper, in the sandbox's network namespace if it has one.
func (l *launcher) startHere(c *exec.Cmd) (*reaper.Proc, error) {
	if l.n == nil {
		return l.r.Start(c)
	}
	var p *reaper.Proc
	err := l.n.Do(func() error {
		var err error
		p, err = l.r.Start(c)
		return err
	})
	return p, err
}

// dialTCP connects to addr on the agent's loopback: inside the sandbox's network
// namespace when it has one (the socket belongs to the namespace it was made in), so
// a forward reaches what the agent listens on.
func (l *launcher) dialTCP(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	if l.n == nil {
		return d.DialContext(ctx, "tcp", addr)
	}
	var c net.Conn
	err := l.n.Do(func() error {
		var err error
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// confineSpec derives the helper's spec; the supervisor binary itself stays
// executable (SFTP re-executes it as the user) whatever the policy lists.
func confineSpec(p *policy.Policy, u *sandboxuser.User, dir string) (*confine.Spec, error) {
	cred := u.Credential()
	if cred == nil {
		return nil, errors.New("supervisor: confinement needs a non-root sandbox user")
	}
	var groups []int
	for _, g := range cred.Groups {
		if g != 0 {
			groups = append(groups, int(g))
		}
	}
	s := confine.SpecFromPolicy(p, int(cred.Uid), int(cred.Gid), groups, dir)
	s.ReadOnly = append(s.ReadOnly, "/proc/self/exe")
	if err := s.Validate(); err != nil {
		return nil, err
	}
	// Checked here, at start, so that hard_requirement fails the sandbox itself
	// rather than each program later.
	abi, err := confine.CheckLandlock(p.LandlockHard())
	if err != nil {
		return nil, fmt.Errorf("supervisor: %w", err)
	}
	if abi == 0 {
		slog.Warn("the kernel does not enforce Landlock: filesystem_policy is not enforced (landlock.compatibility: best_effort)")
	} else {
		slog.Info("Landlock enforced", "abi", abi, "compatibility", p.Landlock.Compatibility)
	}
	return &s, nil
}

// policyWatcher applies new policy versions from the gateway to the proxy and
// reports the outcome. Only network_policies apply live. A version whose process
// section asks for another account than the one the sandbox started with cannot be
// applied to the running main process (nor, for consistency, to later sessions): its
// network_policies are applied, and the version is reported as not applied with an
// error saying so, which the gateway shows as a PolicyApplied=False condition and in
// the sandbox's logs. (The gateway refuses such an update itself; this covers a
// gateway that does not.)
type policyWatcher struct {
	cc      grpc.ClientConnInterface
	id      string
	prx     *egress.Proxy
	net     *netns.Net
	version uint32
	log     *slog.Logger
	// reportInitial reports version as applied when run starts (the start-up policy
	// came from the gateway).
	reportInitial bool
	// process is the start policy's process section and user the account it
	// resolved to: every program of the sandbox runs as user.
	process policy.Process
	user    *sandboxuser.User

	mu sync.Mutex
}

// processChange describes how next's process section differs from the start
// policy's, or "" when it asks for the same account. Values are compared as the
// gateway compares them (no account lookup), with "" and "sandbox" both meaning the
// default account.
func processChange(start, next policy.Process) string {
	norm := func(s string) string {
		if sandboxuser.IsDefault(s) {
			return ""
		}
		return s
	}
	show := func(s string) string {
		if norm(s) == "" {
			return "the default"
		}
		return strconv.Quote(s)
	}
	var parts []string
	if norm(start.RunAsUser) != norm(next.RunAsUser) {
		parts = append(parts, fmt.Sprintf("process.run_as_user from %s to %s", show(start.RunAsUser), show(next.RunAsUser)))
	}
	if norm(start.RunAsGroup) != norm(next.RunAsGroup) {
		parts = append(parts, fmt.Sprintf("process.run_as_group from %s to %s", show(start.RunAsGroup), show(next.RunAsGroup)))
	}
	return strings.Join(parts, " and ")
}

// report tells the gateway whether a version was applied; a gateway without the RPC
// is not an error.
func (w *policyWatcher) report(ctx context.Context, version uint32, applyErr error) {
	req := &pb.ReportPolicyStatusRequest{SandboxId: w.id, Version: version, Status: pb.PolicyStatus_POLICY_STATUS_LOADED}
	if applyErr != nil {
		req.Status, req.LoadError = pb.PolicyStatus_POLICY_STATUS_FAILED, applyErr.Error()
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := pb.NewOpenShellClient(w.cc).ReportPolicyStatus(ctx, req); err != nil && status.Code(err) != codes.Unimplemented {
		w.log.Warn("policy status not reported", "version", version, "err", err)
	}
}

// apply handles one GetSandboxConfig answer.
func (w *policyWatcher) apply(ctx context.Context, resp *sandboxv1.GetSandboxConfigResponse) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if resp == nil || resp.GetPolicy() == nil || resp.GetVersion() == w.version {
		return
	}
	v := resp.GetVersion()
	p, err := policy.FromProto(resp.GetPolicy())
	var c *policy.Compiled
	if err == nil {
		c, err = policy.Compile(p)
	}
	if err != nil {
		if resp.GetPolicyValidationFailureMode() == "retain_last_valid" {
			w.log.Error("new policy version is invalid; keeping the last valid one", "version", v, "err", err)
		} else {
			w.log.Error("new policy version is invalid; denying all egress (policy_validation_failure_mode fail_closed)", "version", v, "err", err)
			w.prx.SetPolicy(policy.MustCompile(policy.Default()))
		}
		w.version = v
		w.report(ctx, v, err)
		return
	}
	w.prx.SetPolicy(c)
	if change := processChange(w.process, p.Process); change != "" {
		who := "the sandbox's account"
		if w.user != nil {
			who = fmt.Sprintf("%s (uid %d, gid %d)", w.user.Name, w.user.UID, w.user.GID)
		}
		err := fmt.Errorf("policy version %d changes %s, which cannot apply to a running sandbox: the main process and new sessions keep running as %s; its network_policies were applied; recreate the sandbox to change the account",
			v, change, who)
		w.log.Error("new policy version changes the process account; applied its network_policies only", "version", v, "previous", w.version, "err", err)
		w.version = v
		w.report(ctx, v, err)
		return
	}
	w.log.Info("policy version applied", "version", v, "previous", w.version)
	w.version = v
	w.report(ctx, v, nil)
}

// run polls the gateway until ctx ends; it also logs growth of the namespace's
// refused-packet counter (programs bypassing the proxy).
func (w *policyWatcher) run(ctx context.Context) {
	if w.reportInitial {
		w.report(ctx, w.version, nil)
	}
	t := time.NewTicker(policyPollInterval)
	defer t.Stop()
	var lastDenied uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := sandboxConfig(cctx, w.cc, w.id, false)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				w.log.Debug("policy poll failed", "err", err)
			}
		} else {
			w.apply(ctx, resp)
		}
		if w.net != nil {
			if pk, _, err := w.net.Denied(); err == nil && pk > lastDenied {
				// Info, not Warn: the kernel's own IPv6 neighbour discovery on the
				// agent's link is counted too; the proxy's denials are the Warn lines.
				w.log.Info("packets that did not go through the egress proxy were dropped", "packets", pk-lastDenied, "total", pk)
				lastDenied = pk
			}
		}
	}
}

// writeCABundle writes the sandbox CA where the agent can read it.
func writeCABundle(root string, ca *credentials.CA) (string, error) {
	p := filepath.Join(root, CABundlePath)
	if err := ca.WriteBundle(p); err != nil { // it creates the directory
		return "", err
	}
	return p, nil
}
