package runner

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/openshell/openshell/drivers/vm/internal/state"
	"github.com/openshell/openshell/internal/rundir"
	proxy "github.com/openshell/openshell/supervisor/egress"
)

// Machine is what the runner needs from a VMM backend. It is satisfied by an adapter
// over vmm.Machine (see machine.go); the small surface keeps the lifecycle logic here
// independent of the backend.
type Machine interface {
	// Listen returns a listener for guest-initiated connections to a channel port.
	// Called before Start so no early guest dial is lost.
	Listen(port uint32) (net.Listener, error)
	Start(ctx context.Context) error
	// Stop shuts the guest down gracefully and returns when the VM is gone.
	Stop(ctx context.Context) error
	Kill() error
	// Wait returns when the VM has exited (nil for a clean guest power-off).
	Wait(ctx context.Context) error
	// PID is the VMM process id (0 before Start).
	PID() int
	Close() error
}

// NewMachine builds the machine for a spec. paths locate the sandbox's files.
type NewMachine func(ctx context.Context, spec *Spec, paths state.Paths, log *slog.Logger) (Machine, error)

// Channel ports the runner serves.
type Ports struct {
	Gateway, Bootstrap, Egress uint32
	// Bulk carries relays' bytes without gRPC in the guest (see serveBulk); 0 = not
	// served (the guest's transfers then go over its session).
	Bulk uint32
}

// Options configure Run.
type Options struct {
	NewMachine NewMachine
	Ports      Ports
	Log        *slog.Logger
	// Hold, when set, is called before boot to pin resources while the VM runs (the
	// cached image); the returned func releases them.
	Hold func(spec *Spec) (release func(), err error)
}

// Tombstone reasons (the driver turns them into condition reasons).
const (
	ReasonStopped    = "Stopped"    // stopped on request (or SIGTERM): not a failure
	ReasonVMExited   = "VMExited"   // the VM ended without being asked
	ReasonKilled     = "Killed"     // killed on request (delete)
	ReasonBootFailed = "BootFailed" // the VM could not be started
)

// consoleTailBytes bounds the console excerpt kept in a tombstone.
const consoleTailBytes = 4096

// Run boots the VM described by dir/runner.json and serves it until the VM is gone.
// It always leaves a tombstone when it returns after the state record was found.
func Run(ctx context.Context, dir string, o Options) (retErr error) {
	log := o.Log
	if log == nil {
		log = slog.Default()
	}
	paths := state.PathsFor(dir)
	spec, err := ReadSpec(dir)
	if err != nil {
		return err
	}
	log = log.With("sandbox_id", spec.SandboxID, "driver", "vm", "component", "runner")
	sp, err := newSuspender(dir, spec)
	if err != nil {
		return err
	}
	if sp.staleFork != nil {
		log.Warn("this copy of a snapshot was made before the host restarted, and its memory may not have reached the disk; it boots from its disk instead of resuming",
			"copy_of", sp.staleFork.ForkOf, "made_in_boot", sp.staleFork.HostBootID)
	}
	defer func() { sp.setAside(retErr, log) }()
	startTime, err := state.ProcStartTime(os.Getpid())
	if err != nil {
		return fmt.Errorf("runner: read own start time: %w", err)
	}
	if err := state.ClearTombstone(dir); err != nil {
		return err
	}
	if _, err := state.Update(dir, func(r *state.Record) error {
		r.RunnerPID, r.RunnerStart = os.Getpid(), startTime
		r.VMMPID, r.VMMStart = 0, 0
		return nil
	}); err != nil {
		return err
	}

	box := newStatusBox(Status{State: StateBooting, RunnerPID: os.Getpid(), StartedAt: time.Now().UTC()})
	var (
		reasonMu            sync.Mutex
		exitReason, exitWhy string
		stopOnce, killOnce  sync.Once
		stopReq             = make(chan struct{})
		killReq             = make(chan struct{})
	)
	setReason := func(reason, why string) {
		reasonMu.Lock()
		defer reasonMu.Unlock()
		if exitReason == "" {
			exitReason, exitWhy = reason, why
		}
	}
	// Whatever happens below, leave a tombstone: the driver reads it to report why.
	// finish runs once: before the control server shuts down (so watchers see the final
	// status at once), or from the outer defer when the server never started.
	var finishOnce sync.Once
	finish := func() {
		finishOnce.Do(func() {
			reasonMu.Lock()
			reason, why := exitReason, exitWhy
			reasonMu.Unlock()
			if reason == "" {
				reason, why = ReasonVMExited, "the VM exited"
			}
			if retErr != nil {
				why = why + ": " + retErr.Error()
			}
			ts := &state.Tombstone{Reason: reason, Message: why, Time: time.Now().UTC(), ConsoleTail: state.Tail(paths.ConsoleLog, consoleTailBytes)}
			if err := state.WriteTombstone(dir, ts); err != nil {
				log.Error("write tombstone", "err", err)
			}
			box.update(func(s *Status) { s.State, s.Reason, s.Message = StateExited, reason, why })
			log.Info("runner exiting", "reason", reason, "message", why)
		})
	}
	defer finish()

	// Control socket first: the driver polls it to see the runner is alive. Its
	// runtime dir may be gone (tmpfs after a reboot) or never made (first boot).
	if err := rundir.Ensure(filepath.Dir(paths.ControlSocket)); err != nil {
		setReason(ReasonBootFailed, "runtime dir")
		return fmt.Errorf("runner: %w", err)
	}
	os.Remove(paths.ControlSocket)
	old := syscall.Umask(0o177)
	cl, err := net.Listen("unix", paths.ControlSocket)
	syscall.Umask(old)
	if err != nil {
		setReason(ReasonBootFailed, "control socket")
		return fmt.Errorf("runner: listen on control socket: %w", err)
	}
	gw := &gatewayTarget{}
	gw.sock.Store(spec.GatewaySocket())
	gw.addr.Store(spec.GatewayAddr)
	var claims *claimBox
	if spec.Pool != "" {
		claims = newClaimBox()
	}
	ctl := &control{
		box: box,
		setGateway: func(addr string) error {
			if _, _, err := net.SplitHostPort(addr); err != nil {
				return fmt.Errorf("gateway address %q: %w", addr, err)
			}
			old := gw.addr.Swap(addr)
			switch {
			case old == addr:
			case gw.socket() != "":
				// A restarted gateway re-creates the socket at the same path; its TCP
				// address does not matter to this runner.
				log.Info("gateway address changed; this runner keeps using the sandbox socket", "old", old, "new", addr, "socket", gw.socket())
			default:
				log.Info("gateway address changed; new guest sessions go there", "old", old, "new", addr)
			}
			return nil
		},
		stop:     func() { stopOnce.Do(func() { close(stopReq) }) },
		kill:     func() { killOnce.Do(func() { close(killReq) }) },
		suspend:  sp.request,
		snapshot: sp.requestSnapshot,
	}
	defer close(sp.done)
	if claims != nil {
		ctl.claim = claims.take
	}
	srv := &http.Server{Handler: ctl.handler(), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(cl)
	defer func() {
		finish()
		// Give watchers a moment to read the final status, then close.
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		os.Remove(paths.ControlSocket)
	}()

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	if o.Hold != nil {
		release, err := o.Hold(spec)
		if err != nil {
			setReason(ReasonBootFailed, "cannot pin the image")
			return err
		}
		defer release()
	}

	m, err := o.NewMachine(ctx, spec, paths, log)
	if err != nil {
		setReason(ReasonBootFailed, "cannot configure the VM")
		return err
	}
	defer m.Close()

	if err := m.Start(ctx); err != nil {
		setReason(ReasonBootFailed, "the VMM did not start")
		return err
	}
	pid := m.PID()
	if spec.Pool != "" && !mayRestoreNice() {
		log.Info("pooled VM keeps normal priority: this runner could not restore it at the claim (no CAP_SYS_NICE, RLIMIT_NICE below 20)")
	} else if spec.Pool != "" {
		// Until its claim, a pooled VM's boot yields the CPU to claimed guests.
		if err := setPoolNice(refillNice, pid); err != nil {
			log.Warn("cannot lower the pooled VM's priority", "err", err)
		}
	}
	qstart, _ := state.ProcStartTime(pid)
	box.update(func(s *Status) {
		s.VMMPID = pid
		s.stamp("vmm")
	})
	if _, err := state.Update(dir, func(r *state.Record) error {
		r.VMMPID, r.VMMStart = pid, qstart
		return nil
	}); err != nil {
		log.Error("record vmm pid", "err", err)
	}
	log.Info("VM started", "vmm_pid", pid, "vcpus", spec.Machine.VCPUs, "memory_mib", spec.Machine.MemoryMiB)

	// The channel's host end exists once the VMM runs; the guest needs over a second to
	// boot before it dials, and its dial retries cover the rest.
	// If anything below fails, the VM must not outlive the runner.
	defer func() {
		if retErr != nil {
			m.Kill()
		}
	}()
	var (
		lns []net.Listener
		wg  sync.WaitGroup
	)
	defer func() {
		for _, l := range lns {
			l.Close()
		}
		wg.Wait()
	}()
	for _, p := range []uint32{o.Ports.Bootstrap, o.Ports.Gateway, o.Ports.Egress} {
		l, err := m.Listen(p)
		if err != nil {
			setReason(ReasonBootFailed, fmt.Sprintf("cannot listen on channel port %d", p))
			return err
		}
		lns = append(lns, l)
	}
	var bulkLn net.Listener
	if o.Ports.Bulk != 0 {
		var err error
		if bulkLn, err = m.Listen(o.Ports.Bulk); err != nil {
			setReason(ReasonBootFailed, fmt.Sprintf("cannot listen on channel port %d", o.Ports.Bulk))
			return err
		}
		lns = append(lns, bulkLn)
	}
	// serve starts what belongs to the sandbox: the instance secret, the gateway
	// bridge, the egress relay and the bootstrap document. A pooled VM has none until
	// it is claimed.
	var stopEgress func()
	defer func() {
		if stopEgress != nil {
			stopEgress()
		}
	}()
	serve := func() error {
		if gw.socket() != "" {
			log.Info("guest sessions are bridged to the gateway's sandbox socket (plaintext gRPC in the guest)", "socket", gw.socket())
		} else {
			log.Info("no gateway socket for this sandbox; guest sessions are bridged to the gateway's TCP address (TLS from the guest)", "addr", spec.GatewayAddr)
		}
		// A new boot, a new instance secret: it reaches the guest only in the bootstrap
		// document (never runner.json) and admits the guest's gateway and egress streams.
		secret, err := sp.instanceSecret()
		if err != nil {
			setReason(ReasonBootFailed, "instance secret")
			return err
		}
		boot := spec.Bootstrap
		boot.InstanceSecret = secret.String()
		bootDoc, err := json.Marshal(boot)
		if err != nil {
			setReason(ReasonBootFailed, "bootstrap config")
			return fmt.Errorf("runner: encode bootstrap config: %w", err)
		}
		limits := spec.Limits.WithDefaults()
		gwGate := &gate{port: "gateway", limit: limits.GatewayStreams, secret: secret, box: box, log: log,
			refused: func(s *Status) { s.GatewayRefused++ }}
		egGate := &gate{port: "egress", limit: limits.EgressStreams, secret: secret, box: box, log: log,
			refused: func(s *Status) { s.EgressRefused++ }}
		lns[1], lns[2] = gwGate.listen(lns[1]), egGate.listen(lns[2])
		// The document first: the guest's start-up need not wait for the runner's own
		// first policy fetch below (its egress is refused until that is known).
		wg.Add(2)
		go func() { defer wg.Done(); sp.serveBootstrap(lns[0], bootDoc, box, log) }()
		go func() { defer wg.Done(); serveGateway(lns[1], gw, box, log) }()
		if bulkLn != nil {
			bkGate := &gate{port: "bulk", limit: limits.GatewayStreams, secret: secret, box: box, log: log,
				refused: func(s *Status) { s.GatewayRefused++ }}
			gl := bkGate.listen(bulkLn)
			lns[3] = gl
			wg.Add(1)
			go func() { defer wg.Done(); serveBulk(gl, &spec.Bootstrap, gw, log) }()
		}
		// The guest's egress is re-checked here against the sandbox's network policy,
		// which the runner polls from the gateway (fail closed until it is known).
		if stopEgress, err = startEgress(ctx, lns[2], spec, gw, log); err != nil {
			setReason(ReasonBootFailed, "cannot serve the guest's egress with the policy check")
			return err
		}
		return nil
	}
	var claimCh chan *Claim
	// The settle watch of a pooled VM ends at its claim (or the runner's end).
	settleCtx, stopSettle := context.WithCancel(ctx)
	defer stopSettle()
	if claims == nil {
		if err := serve(); err != nil {
			return err
		}
		if err := sp.resumeGuest(ctx, m, box, log); err != nil {
			setReason(ReasonBootFailed, "cannot resume the suspended VM")
			return err
		}
	} else {
		claimCh = claims.ch
		var settleOnce sync.Once
		lns[0] = newHoldingListener(lns[0], func() {
			box.update(func(s *Status) { s.GuestWaiting = true })
			log.Info("pooled VM: the guest waits for its identity", "pool", spec.Pool)
			settleOnce.Do(func() { go watchSettle(settleCtx, pid, box, log) })
		})
		box.update(func(s *Status) { s.State, s.Pool = StatePooled, spec.Pool })
		log.Info("pooled VM booting; it serves no sandbox until claimed", "pool", spec.Pool)
		// The egress relay started at the claim verifies upstream servers against
		// the system's roots, which the first use parses and caches for the process:
		// 75-95 ms of this host's CPU, which at the claim the guest's start-up wants.
		go func() { _, _ = x509.SystemCertPool() }()
	}

	exited := make(chan error, 1)
	go func() { exited <- m.Wait(context.Background()) }()

	stopTimeout := time.Duration(spec.StopTimeout)
	if stopTimeout <= 0 {
		stopTimeout = 30 * time.Second
	}
	graceful := func(reason, why string) error {
		setReason(reason, why)
		box.update(func(s *Status) { s.State = StateStopping })
		sctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		defer cancel()
		if err := m.Stop(sctx); err != nil {
			log.Warn("graceful stop failed; killing the VM", "err", err)
			m.Kill()
		}
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			return errors.New("VM did not exit after kill")
		}
		return nil
	}
	for {
		select {
		case cl := <-claimCh:
			claimCh = nil
			stopSettle()
			cl.apply(spec)
			gw.sock.Store(spec.GatewaySocket())
			log = log.With("sandbox_id", spec.SandboxID)
			// This create's timeline starts at the claim: the boot steps were another
			// time's (the pool's), not this sandbox's wait.
			box.update(func(s *Status) { s.State, s.ClaimedAt, s.Timeline = StateBooting, time.Now().UTC(), nil })
			log.Info("pooled VM claimed by a sandbox", "sandbox_name", spec.SandboxName)
			// The VMM's threads first, at once, and its helpers' (the channel backend):
			// the vCPUs run the guest's start-up, which the document served next
			// begins, and every message of it to the host goes through the backend. The
			// session's other processes follow while the document is served: finding
			// them walks /proc, 10-17 ms here, all of it spent before the guest had its
			// document when done first.
			t0 := time.Now()
			pids := []int{m.PID()}
			if h, ok := m.(interface{ HelperPIDs() []int }); ok {
				pids = append(pids, h.HelperPIDs()...)
			}
			if err := setVMMNice(0, pids...); err != nil {
				log.Warn("cannot restore the claimed VM's priority", "err", err)
			}
			vmmAt := time.Since(t0)
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := setPoolNice(0, 0); err != nil {
					log.Warn("cannot restore the claimed VM's priority", "err", err)
				}
				log.Info("claimed VM back at normal priority", "vmm_took", vmmAt, "took", time.Since(t0))
			}()
			if err := serve(); err != nil {
				return err
			}
			continue
		case req := <-sp.reqs:
			if sp.handle(req, m, spec, exited, setReason, log) {
				return nil
			}
			continue
		case err := <-exited:
			msg := "the VM exited unexpectedly"
			if err != nil {
				msg = fmt.Sprintf("the VM exited unexpectedly: %v", err)
			}
			setReason(ReasonVMExited, msg)
			return nil
		case <-stopReq:
			return graceful(ReasonStopped, "stopped on request")
		case sig := <-sigs:
			return graceful(ReasonStopped, "runner received "+sig.String())
		case <-killReq:
			setReason(ReasonKilled, "killed on request")
			m.Kill()
			<-exited
			return nil
		case <-ctx.Done():
			return graceful(ReasonStopped, "runner context ended")
		}
	}
}

// gatewayTarget is where the runner reaches the gateway: the sandbox's socket when the
// gateway made one, else its TCP address (which the driver may repoint after a gateway
// restart).
type gatewayTarget struct {
	sock atomic.Value // string: set once more when a pooled VM is claimed
	addr atomic.Value // string
}

func (g *gatewayTarget) socket() string { s, _ := g.sock.Load().(string); return s }

// dial connects once to the gateway; what names the target for logs.
func (g *gatewayTarget) dial(ctx context.Context, timeout time.Duration) (c net.Conn, what string, err error) {
	d := net.Dialer{Timeout: timeout}
	if sock := g.socket(); sock != "" {
		c, err = d.DialContext(ctx, "unix", sock)
		return c, sock, err
	}
	addr := g.addr.Load().(string)
	c, err = d.DialContext(ctx, "tcp", addr)
	return c, addr, err
}

// serveGateway bridges the guest's admitted gateway-port connections (the instance
// preamble already read) to the gateway.
func serveGateway(l net.Listener, gw *gatewayTarget, box *statusBox, log *slog.Logger) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		box.update(func(s *Status) { s.Gateway++ })
		go func() {
			defer c.Close()
			up, what, err := bridgeDial(gw, gatewayDialPatience)
			if err != nil {
				log.Warn("gateway bridge: dial gateway", "target", what, "err", err)
				return
			}
			defer up.Close()
			proxy.Splice(c, up)
		}()
	}
}

// gatewayDialPatience is how long the bridge keeps trying to reach the gateway for a
// guest connection. A gateway that restarts is back within it (re-creating its
// socket, or listening again), and the guest's connection then goes through at once,
// instead of failing and leaving the guest to its transport's backoff (1 s, 1.6 s,
// 2.6 s, …), which would keep the sandbox from Ready for seconds after the gateway is
// up. It stays below the guest's 5 s connect timeout, so a gateway that stays away
// still fails the guest's attempt first here.
const gatewayDialPatience = 4 * time.Second

// bridgeDial dials the gateway (its current address: the driver may change it while
// the bridge waits) every 100 ms until it answers or patience runs out.
func bridgeDial(gw *gatewayTarget, patience time.Duration) (net.Conn, string, error) {
	deadline := time.Now().Add(patience)
	for {
		up, what, err := gw.dial(context.Background(), time.Second)
		if err == nil || time.Now().After(deadline) {
			return up, what, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}
