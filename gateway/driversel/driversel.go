// Package driversel picks and builds the gateway's compute driver: a registry of
// factories (name → constructor), auto-detection (kubernetes, then podman, then
// docker; vm is never auto-detected), attaching to an external driver socket, and the
// process manager that runs the VM driver as a child process.
package driversel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/grpcdriver"
	"github.com/openshell/openshell/gateway/config"
)

// DriverEnv is what every driver factory receives from the gateway.
type DriverEnv struct {
	// Name is the selected driver name.
	Name string
	// GatewayHost and GatewayPort are the gateway as seen from inside a sandbox
	// (host "host.openshell.internal"); GatewayEndpoint is the URL built from them
	// (https:// unless TLS is disabled).
	GatewayHost     string
	GatewayPort     int
	GatewayEndpoint string
	// GatewayListenAddr is the gateway's own listen address (host:port on the host).
	GatewayListenAddr string
	// CAPEM is the gateway CA bundle (empty with TLS disabled); CAFile is its path.
	CAPEM  []byte
	CAFile string
	// SupervisorBinary is the host path of the static openshell-sandbox binary.
	SupervisorBinary string
	// StateDir is the gateway's state directory; drivers keep their state in
	// StateDir/<name>-driver or below.
	StateDir string
	// EngineSocket is the container engine socket auto-detection found (docker,
	// podman); empty when the driver was chosen explicitly.
	EngineSocket string
	// Table is the driver's `[drivers.<name>]` TOML table (never nil).
	Table map[string]any
	// GatewaySockets: the gateway gives each sandbox a socket of its own
	// (DriverSandboxSpec.gateway_socket_dir), so no listener for sandboxes on a
	// network is needed.
	GatewaySockets bool
	// Log is the gateway's logger.
	Log *slog.Logger
}

// Decode decodes the driver's TOML table into a config struct (with toml tags).
func (e DriverEnv) Decode(v any) error {
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(e.Table); err != nil {
		return fmt.Errorf("[drivers.%s]: %w", e.Name, err)
	}
	md, err := toml.Decode(buf.String(), v)
	if err != nil {
		return fmt.Errorf("[drivers.%s]: %w", e.Name, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return fmt.Errorf("[drivers.%s]: unknown keys %s", e.Name, strings.Join(keys, ", "))
	}
	return nil
}

// Factory builds a driver. Drivers that start helper processes stop them in Close.
type Factory func(ctx context.Context, env DriverEnv) (drivers.Driver, error)

var (
	mu        sync.Mutex
	factories = map[string]Factory{}
)

// Register adds (or replaces) a factory. Call it from an init function; adding a
// driver to the gateway is one Register line.
func Register(name string, f Factory) {
	mu.Lock()
	defer mu.Unlock()
	factories[name] = f
}

// Names returns the registered driver names, sorted.
func Names() []string {
	mu.Lock()
	defer mu.Unlock()
	return slices.Sorted(maps.Keys(factories))
}

// ValidNames are the names --drivers accepts.
var ValidNames = config.DriverNames

// ErrNotBuilt is returned for a known driver name that has no factory registered in
// this gateway (its package is not built in).
var ErrNotBuilt = errors.New("driver not built into this gateway")

// Built reports whether a factory is registered for name. Only built drivers are
// registered, so auto-detection never picks a driver that cannot start.
func Built(name string) bool {
	mu.Lock()
	defer mu.Unlock()
	return factories[name] != nil
}

// notBuiltError names the driver, what is built and the ways forward.
func notBuiltError(name string) error {
	return fmt.Errorf("compute driver %q: %w; use --drivers with one of %s, or attach an external driver with --compute-driver-socket",
		name, ErrNotBuilt, strings.Join(Names(), ", "))
}

// Build creates the named driver via its factory.
func Build(ctx context.Context, name string, env DriverEnv) (drivers.Driver, error) {
	if !slices.Contains(ValidNames, name) {
		return nil, fmt.Errorf("unknown compute driver %q; use exactly one of %s", name, strings.Join(ValidNames, ", "))
	}
	mu.Lock()
	f := factories[name]
	mu.Unlock()
	if f == nil {
		return nil, notBuiltError(name)
	}
	env.Name = name
	if env.Table == nil {
		env.Table = map[string]any{}
	}
	return f(ctx, env)
}

// Attach connects to an already running external driver on a Unix socket.
func Attach(ctx context.Context, socket string) (drivers.Driver, error) {
	c, err := grpcdriver.Dial(ctx, socket)
	if err != nil {
		return nil, fmt.Errorf("compute driver socket %s: %w; start the driver first or fix --compute-driver-socket", socket, err)
	}
	return c, nil
}

// ParseDriverName validates a --drivers value: exactly one known name.
func ParseDriverName(v string) (string, error) { return config.ParseDriverName(v) }

// Detector finds a usable driver when none was chosen. Its fields make it testable;
// the zero value uses the real environment.
type Detector struct {
	Getenv       func(string) string
	UID          int    // -1 = os.Getuid()
	DockerSocket string // default /var/run/docker.sock
	PodmanSocket string // the rootful Podman socket; default /run/podman/podman.sock
	Timeout      time.Duration
	// Built says whether a driver is built into this gateway (default: the registry,
	// Built); drivers that are not are passed over, and the error says so.
	Built func(name string) bool
}

// Detection is what Detect found.
type Detection struct {
	Driver string
	// Socket is the engine socket for podman/docker.
	Socket string
}

// NewDetector returns a detector for this process's environment.
func NewDetector() Detector { return Detector{Getenv: os.Getenv, UID: os.Getuid()} }

// Detect probes kubernetes (KUBERNETES_SERVICE_HOST), then podman sockets
// (CONTAINER_HOST, the rootless user socket, the rootful socket; one whose /_ping
// answer carries Libpod-Api-Version), then docker sockets (answering
// /_ping without it). vm is never auto-detected, and neither is a driver that is not
// built into this gateway: the search goes on past it, and the error names it.
func (d Detector) Detect(ctx context.Context) (Detection, error) {
	getenv := d.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	built := d.Built
	if built == nil {
		built = Built
	}
	var passed []string // found but not built
	if getenv("KUBERNETES_SERVICE_HOST") != "" {
		if built("kubernetes") {
			return Detection{Driver: "kubernetes"}, nil
		}
		passed = append(passed, "KUBERNETES_SERVICE_HOST is set, but the kubernetes driver is not built into this gateway")
	}
	found := func(driver, socket string) (Detection, bool) {
		if built(driver) {
			return Detection{Driver: driver, Socket: socket}, true
		}
		passed = append(passed, fmt.Sprintf("a %s engine answered on %s, but the %s driver is not built into this gateway", driver, socket, driver))
		return Detection{}, false
	}
	var tried []string
	// Podman: CONTAINER_HOST (what the podman CLI itself reads), the user's rootless
	// socket, then the rootful one.
	var podman []string
	for _, k := range []string{"OPENSHELL_PODMAN_SOCKET", "CONTAINER_HOST"} {
		if p := getenv(k); strings.HasPrefix(p, "unix://") || strings.HasPrefix(p, "/") {
			podman = append(podman, strings.TrimPrefix(p, "unix://"))
		}
	}
	if x := getenv("XDG_RUNTIME_DIR"); x != "" {
		podman = append(podman, filepath.Join(x, "podman", "podman.sock"))
	}
	uid := d.UID
	if uid < 0 {
		uid = os.Getuid()
	}
	podman = append(podman, filepath.Join("/run/user", strconv.Itoa(uid), "podman", "podman.sock"))
	rootful := d.PodmanSocket
	if rootful == "" {
		rootful = "/run/podman/podman.sock"
	}
	podman = append(podman, rootful)
	for _, s := range podman {
		tried = append(tried, s)
		if kind := d.ping(ctx, s); kind == "podman" {
			if det, ok := found("podman", s); ok {
				return det, nil
			}
		}
	}
	var docker []string
	if h := getenv("DOCKER_HOST"); strings.HasPrefix(h, "unix://") {
		docker = append(docker, strings.TrimPrefix(h, "unix://"))
	}
	ds := d.DockerSocket
	if ds == "" {
		ds = "/var/run/docker.sock"
	}
	docker = append(docker, ds)
	for _, s := range docker {
		tried = append(tried, s)
		// Podman's Docker-compatible socket answers as podman: it is podman.
		if kind := d.ping(ctx, s); kind != "" {
			if det, ok := found(kind, s); ok {
				return det, nil
			}
		}
	}
	why := "KUBERNETES_SERVICE_HOST is unset and no Podman or Docker engine answered on " + strings.Join(tried, ", ")
	if len(passed) > 0 {
		why = strings.Join(passed, "; ") + "; and no other engine answered on " + strings.Join(tried, ", ")
	}
	return Detection{}, fmt.Errorf("no compute driver found: %s; "+
		"start one, or choose a driver explicitly with --drivers (one of %s; vm runs microVMs and is never auto-detected)",
		why, strings.Join(Names(), ", "))
}

// ping GETs /_ping on a Unix socket: "podman", "docker" or "" (nothing answered).
func (d Detector) ping(ctx context.Context, socket string) string {
	if st, err := os.Stat(socket); err != nil || st.Mode()&os.ModeSocket == 0 {
		return ""
	}
	timeout := d.Timeout
	if timeout == 0 {
		timeout = 2 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var nd net.Dialer
		return nd.DialContext(ctx, "unix", socket)
	}}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://engine/_ping", nil)
	if err != nil {
		return ""
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return ""
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return ""
	}
	if resp.Header.Get("Libpod-Api-Version") != "" {
		return "podman"
	}
	return "docker"
}
