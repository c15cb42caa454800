// Package daemon assembles a running gateway from a resolved config: state directory,
// PKI, sandbox token issuer, store, compute driver, gRPC server with auth, and the
// optional health/metrics HTTP listener. cmd/openshell-gateway is a thin wrapper.
package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/gateway"
	"github.com/openshell/openshell/gateway/auth"
	"github.com/openshell/openshell/gateway/config"
	"github.com/openshell/openshell/gateway/driversel"
	"github.com/openshell/openshell/gateway/pki"
	"github.com/openshell/openshell/gateway/secrets"
	"github.com/openshell/openshell/gateway/sshrelay"
	"github.com/openshell/openshell/gateway/store"
	"github.com/openshell/openshell/gateway/store/postgres"
	"github.com/openshell/openshell/gateway/store/sqlite"
	"github.com/openshell/openshell/gateway/token"
	"github.com/openshell/openshell/internal/grpcopts"
)

// PKIDir is where the gateway keeps its CA and certificates.
func PKIDir(stateDir string) string { return config.PKIDir(stateDir) }

// CertHosts are the names the server certificate covers for a config.
func CertHosts(cfg *config.Config) []string {
	hosts := []string{}
	if ip := net.ParseIP(cfg.BindAddress); ip != nil && !ip.IsUnspecified() {
		hosts = append(hosts, cfg.BindAddress)
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		hosts = append(hosts, strings.ToLower(h))
	}
	return append(hosts, cfg.TLSHosts...)
}

// EnsureCerts creates (or reuses) the gateway PKI in the state directory.
func EnsureCerts(cfg *config.Config) (*pki.Bundle, error) {
	return pki.Ensure(PKIDir(cfg.StateDir), CertHosts(cfg))
}

// gatewayID is a stable id for this gateway installation (token issuer/audience).
func gatewayID(stateDir string) (string, error) {
	p := filepath.Join(stateDir, "gateway-id")
	if b, err := os.ReadFile(p); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b)), nil
	}
	id := uuid.NewString()
	if err := os.WriteFile(p, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("writing gateway id: %w", err)
	}
	return id, nil
}

// OpenStore opens PostgreSQL when a URL is configured, else the SQLite file in the
// state directory.
func OpenStore(ctx context.Context, cfg *config.Config) (store.Store, error) {
	if cfg.DatabaseURL != "" {
		return postgres.Open(ctx, cfg.DatabaseURL)
	}
	return sqlite.Open(ctx, cfg.DatabasePath())
}

// Gateway is a running gateway.
type Gateway struct {
	Addr       net.Addr
	HealthAddr net.Addr
	// SocketPath is the local Unix socket ("" when off).
	SocketPath string
	DriverName string
	Server     *gateway.Server

	grpc   *grpc.Server
	health *http.Server
	// socketDir is the default socket's runtime dir, removed at Stop once empty.
	socketDir string
	// sbs serves the per-sandbox sockets (nil: the driver's sandboxes use TCP).
	sbs    *sandboxSockets
	driver drivers.Driver
	store  store.Store
	log    *slog.Logger
	done   chan error
	// replicas is this gateway's part in a replica set (nil: a single gateway).
	replicas *replicas
}

// Start brings a gateway up and returns once it is serving.
func Start(ctx context.Context, cfg *config.Config, log *slog.Logger) (_ *Gateway, retErr error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var cleanups []func() error
	defer func() {
		if retErr != nil {
			for i := len(cleanups) - 1; i >= 0; i-- {
				_ = cleanups[i]()
			}
		}
	}()
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir %s: %w", cfg.StateDir, err)
	}
	gwID, err := gatewayID(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	var bundle *pki.Bundle
	var caFile string
	if cfg.DisableTLS {
		log.Warn("TLS is disabled: the gateway serves plaintext gRPC and treats every caller without a token as the local user; use this only for local development")
	} else {
		if bundle, err = EnsureCerts(cfg); err != nil {
			return nil, fmt.Errorf("gateway certificates: %w", err)
		}
		caFile = filepath.Join(PKIDir(cfg.StateDir), pki.CACertFile)
	}
	issuer, err := token.NewIssuer(filepath.Join(cfg.StateDir, "sandbox-token.key"), gwID)
	if err != nil {
		return nil, fmt.Errorf("sandbox token issuer: %w", err)
	}
	st, err := OpenStore(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	cleanups = append(cleanups, st.Close)

	lis, err := net.Listen("tcp", cfg.Addr())
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w; is another gateway running? pick another --port", cfg.Addr(), err)
	}
	cleanups = append(cleanups, lis.Close)
	port := lis.Addr().(*net.TCPAddr).Port
	ulis, upol, err := listenSocket(cfg)
	switch {
	case err != nil && cfg.Socket == "":
		// The default socket is a convenience: where the runtime dir cannot be made
		// (a read-only root in a container), clients still have TCP with mTLS.
		log.Warn("no local socket; CLI clients use TCP with mTLS", "err", err)
	case err != nil:
		return nil, err
	}
	if ulis != nil {
		cleanups = append(cleanups, ulis.Close)
	}

	scheme := "https"
	if cfg.DisableTLS {
		scheme = "http"
	}
	env := driversel.DriverEnv{
		GatewayHost:       pki.SandboxHostName,
		GatewayPort:       port,
		GatewayEndpoint:   scheme + "://" + net.JoinHostPort(pki.SandboxHostName, strconv.Itoa(port)),
		GatewayListenAddr: lis.Addr().String(),
		CAFile:            caFile,
		StateDir:          cfg.StateDir,
		Log:               log,
	}
	if bundle != nil {
		env.CAPEM = bundle.CAPEM
	}
	var drv drivers.Driver
	name := cfg.Driver
	switch {
	case cfg.ComputeDriverSocket != "":
		if name == "" {
			name = "external"
		}
		drv, err = driversel.Attach(ctx, cfg.ComputeDriverSocket)
	default:
		if name == "" {
			det, derr := driversel.NewDetector().Detect(ctx)
			if derr != nil {
				return nil, derr
			}
			name = det.Driver
			env.EngineSocket = det.Socket
			log.Info("auto-detected compute driver", "driver", name, "socket", det.Socket)
		}
		env.Table = cfg.DriverTable(name)
		env.GatewaySockets = usesSandboxSockets(name, env.Table)
		if sb, _ := env.Table["supervisor_binary"].(string); sb != "" {
			env.SupervisorBinary = sb
		} else if p, ferr := driversel.FindBinary("openshell-sandbox", ""); ferr == nil {
			env.SupervisorBinary = p
		}
		drv, err = driversel.Build(ctx, name, env)
	}
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, drv.Close)
	var sbs *sandboxSockets
	if env.GatewaySockets {
		if sbs, err = newSandboxSockets(cfg.StateDir, log); err != nil {
			return nil, fmt.Errorf("%w; or set gateway_endpoint in [drivers.%s] so that sandboxes dial the gateway over TCP", err, name)
		}
		cleanups = append(cleanups, sbs.Close)
	}
	extra, err := extraListeners(ctx, drv, lis.Addr().(*net.TCPAddr), cfg.DisableTLS, log)
	if err != nil {
		return nil, err
	}
	for _, l := range extra {
		cleanups = append(cleanups, l.Close)
	}

	// Provider credentials are sealed with a key kept next to the PKI, outside the DB.
	box, err := secrets.LoadOrCreate(filepath.Join(cfg.StateDir, secrets.KeyFile))
	if err != nil {
		return nil, err
	}
	gopts := gateway.Options{
		Store: st, Driver: drv, DriverName: name, Tokens: issuer, Log: log,
		GatewayHost: hostForClients(cfg), GatewayPort: uint32(port), GatewayScheme: scheme,
		Exec: sshrelay.Exec, Interactive: sshrelay.Interactive, Secrets: box, SSHSessionTTL: cfg.SSHSessionTTL,
		SharedStore: cfg.PeerAddress != "",
	}
	if sbs != nil {
		gopts.SandboxSockets = sbs
		// A restarted gateway serves the sandboxes it knows again: their containers
		// mount the directory, and their supervisors redial the new socket.
		if err := openKnownSockets(ctx, st, sbs, log); err != nil {
			return nil, err
		}
	}
	srv, err := gateway.New(ctx, gopts)
	if err != nil {
		return nil, err
	}
	reps, err := startReplicas(ctx, cfg, bundle, st, srv.Hub(), log)
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, reps.Close)
	if err := srv.Start(ctx); err != nil {
		return nil, err
	}
	cleanups = append(cleanups, srv.Close)
	if err := startServices(cfg, srv, log); err != nil {
		return nil, err
	}

	var creds credentials.TransportCredentials
	if bundle != nil {
		creds = grpcopts.TLS(bundle.ServerTLSConfig())
	}
	if ulis != nil || sbs != nil {
		tcp := creds
		if tcp == nil {
			tcp = insecure.NewCredentials()
		}
		creds = &splitCreds{tcp: tcp, local: upol}
	}
	opts := grpcopts.Server(creds)
	gs := gateway.NewGRPCServer(&auth.Authenticator{Tokens: issuer, LocalDev: cfg.DisableTLS, Log: log}, opts...)
	srv.Register(gs)

	g := &Gateway{Addr: lis.Addr(), DriverName: name, Server: srv, grpc: gs, sbs: sbs, driver: drv, store: st, log: log, done: make(chan error, 1), replicas: reps}
	if cfg.HealthPort != 0 {
		hl, err := net.Listen("tcp", net.JoinHostPort(cfg.BindAddress, strconv.Itoa(cfg.HealthPort)))
		if err != nil {
			return nil, fmt.Errorf("health port %d: %w", cfg.HealthPort, err)
		}
		g.HealthAddr = hl.Addr()
		g.health = &http.Server{Handler: g.healthMux(), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = g.health.Serve(hl) }()
	}
	go func() { g.done <- gs.Serve(lis) }()
	for _, l := range extra {
		go func() { _ = gs.Serve(l) }()
	}
	if sbs != nil {
		sbs.start(func(l net.Listener) { _ = gs.Serve(l) },
			func(c *net.UnixConn, id string) { _ = srv.ServeSandboxBulk(c, id) })
	}
	if ulis != nil {
		g.SocketPath = ulis.Addr().String()
		if cfg.Socket == "" {
			g.socketDir = filepath.Dir(g.SocketPath)
		}
		go func() { _ = gs.Serve(ulis) }()
	}
	log.Info("gateway listening", "addr", lis.Addr().String(), "tls", !cfg.DisableTLS, "driver", name, "socket", g.SocketPath,
		"state_dir", cfg.StateDir, "health", fmt.Sprint(g.HealthAddr))
	return g, nil
}

// extraListeners opens the additional listeners a driver needs (wire protocol §4.2,
// GetGatewayListenerRequirements): e.g. the VM driver's runners reach the gateway on
// loopback, so a gateway bound elsewhere also listens on 127.0.0.1:<port>.
//
// A plaintext gateway (disableTLS) treats every caller without a token as an
// administrator, so it never opens a listener off loopback (e.g. on a container
// bridge that sandboxes reach).
func extraListeners(ctx context.Context, drv drivers.Driver, main *net.TCPAddr, disableTLS bool, log *slog.Logger) ([]net.Listener, error) {
	lr, ok := drv.(drivers.ListenerRequirer)
	if !ok {
		return nil, nil
	}
	reqs, err := lr.ListenerRequirements(ctx)
	if err != nil {
		if errors.Is(err, drivers.ErrNotSupported) {
			return nil, nil
		}
		return nil, fmt.Errorf("compute driver listener requirements: %w", err)
	}
	var addrs []string
	for _, r := range reqs {
		switch sel := r.GetSelector().(type) {
		case *computev1.GatewayListenerRequirement_LoopbackInterface:
			if main.IP.IsLoopback() || main.IP.IsUnspecified() {
				continue
			}
			addrs = append(addrs, net.JoinHostPort("127.0.0.1", strconv.Itoa(main.Port)))
		case *computev1.GatewayListenerRequirement_ExactBindAddress:
			want, err := net.ResolveTCPAddr("tcp", sel.ExactBindAddress)
			if err != nil || want.Port != main.Port {
				return nil, fmt.Errorf("compute driver wants the gateway on %q (%s), which is not an address on the gateway port %d", sel.ExactBindAddress, r.GetReason(), main.Port)
			}
			if want.IP.Equal(main.IP) || main.IP.IsUnspecified() {
				continue
			}
			addrs = append(addrs, want.String())
		case *computev1.GatewayListenerRequirement_DefaultRouteInterface:
			if !main.IP.IsUnspecified() {
				log.Warn("the compute driver needs the gateway on the default-route interface; bind with --bind-address 0.0.0.0", "reason", r.GetReason())
			}
		default:
			return nil, fmt.Errorf("compute driver sent a listener requirement without a selector (%s)", r.GetReason())
		}
	}
	if disableTLS {
		for _, a := range addrs {
			if h, _, _ := net.SplitHostPort(a); !config.IsLoopback(h) {
				return nil, fmt.Errorf("the compute driver needs the gateway on %s, which is not loopback, but --disable-tls makes every caller there an administrator: run the gateway with TLS (drop --disable-tls), or configure the driver so that sandboxes do not reach the gateway over a network (e.g. the docker driver without gateway_serves_bridge)", a)
			}
		}
	}
	var out []net.Listener
	for _, a := range addrs {
		l, err := net.Listen("tcp", a)
		if err != nil {
			for _, o := range out {
				o.Close()
			}
			return nil, fmt.Errorf("extra listener %s for the compute driver: %w", a, err)
		}
		log.Info("extra listener for the compute driver", "addr", a)
		out = append(out, l)
	}
	return out, nil
}

// usesSandboxSockets: container sandboxes (and VM runners) on this host reach
// the gateway through a socket of their own, unless the driver's table names a
// gateway_endpoint: then they dial that (several replicas behind a balancer).
func usesSandboxSockets(driver string, table map[string]any) bool {
	switch driver {
	case "docker", "podman", "vm":
	default:
		return false
	}
	ep, _ := table["gateway_endpoint"].(string)
	return ep == ""
}

// openKnownSockets re-creates the socket of every sandbox in the store and removes
// the directories of sandboxes that are gone.
func openKnownSockets(ctx context.Context, st store.Store, sbs *sandboxSockets, log *slog.Logger) error {
	objs, err := st.List(ctx, gateway.KindSandbox, store.ListOptions{AllWorkspaces: true})
	if err != nil {
		return fmt.Errorf("listing sandboxes for their gateway sockets: %w", err)
	}
	known := map[string]bool{}
	for _, o := range objs {
		known[o.ID] = true
		if _, err := sbs.Open(o.ID); err != nil {
			log.Warn("could not re-create a sandbox's gateway socket", "sandbox_id", o.ID, "err", err)
		}
	}
	sbs.Prune(known)
	return nil
}

func hostForClients(cfg *config.Config) string {
	if ip := net.ParseIP(cfg.BindAddress); ip != nil && ip.IsUnspecified() {
		return "127.0.0.1"
	}
	return cfg.BindAddress
}

func (g *Gateway) healthMux() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "openshell_gateway_up", Help: "1 while the gateway serves."},
		func() float64 { return 1 }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "openshell_gateway_supervisor_sessions", Help: "Live supervisor sessions."},
		func() float64 { return float64(g.Server.Hub().Count()) }))
	registerPoolMetrics(reg, g.driver)
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		if _, err := g.driver.Capabilities(ctx); err != nil {
			http.Error(w, "compute driver not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux
}

// Wait blocks until the gRPC server stops.
func (g *Gateway) Wait() error { return <-g.done }

// Stop shuts down gracefully (bounded), then closes the driver (which stops a VM
// driver process but not its VMs) and the store.
func (g *Gateway) Stop(timeout time.Duration) error {
	// End sessions and watches first: GracefulStop waits for every open stream.
	srvErr := g.Server.Close()
	stopped := make(chan struct{})
	go func() { g.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(timeout):
		g.grpc.Stop()
	}
	if g.health != nil {
		_ = g.health.Close()
	}
	if g.sbs != nil {
		_ = g.sbs.Close()
	}
	if g.socketDir != "" {
		_ = os.Remove(g.socketDir) // only when empty: the socket went with its listener
	}
	errs := []error{srvErr, g.replicas.Close(), g.driver.Close(), g.store.Close()}
	return errors.Join(errs...)
}

// ClientTLS is a helper for tests and tools: the client TLS config from the state dir.
func ClientTLS(stateDir string) (*tls.Config, error) {
	b, err := pki.Ensure(PKIDir(stateDir), nil)
	if err != nil {
		return nil, err
	}
	return b.ClientTLSConfig(), nil
}
