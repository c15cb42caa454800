package docker

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/containers"
)

// Label keys, paths inside a sandbox container and the gateway's host name are the
// ones every container driver uses (drivers/labels.go).
const (
	LabelManagedBy   = drivers.LabelManagedBy
	ManagedByValue   = drivers.ManagedByValue
	LabelSandboxID   = drivers.LabelSandboxID
	LabelSandboxName = drivers.LabelSandboxName
	LabelImage       = drivers.LabelImage
	LabelWorkspace   = drivers.LabelWorkspace
	SupervisorPath   = drivers.SupervisorPath
	BootstrapDir     = drivers.BootstrapDir
	GatewayHost      = drivers.GatewayHost
)

// Defaults filled by Config.withDefaults.
const (
	DefaultNetwork      = "openshell"
	DefaultMinMemory    = containers.DefaultMinMemory
	DefaultPidsLimit    = containers.DefaultPidsLimit
	DefaultStopTimeout  = containers.DefaultStopTimeout
	DefaultResync       = containers.DefaultResync
	defaultSocketPath   = "/var/run/docker.sock"
	defaultStateSubpath = ".local/state/openshell/docker"
)

// Config configures the Docker driver. Zero values are filled by defaults where noted.
type Config struct {
	// Host is the Docker daemon address (unix:///path or tcp://…); default
	// $DOCKER_HOST, else unix:///var/run/docker.sock.
	Host string `json:"host,omitempty" toml:"host"`
	// SupervisorBinary is the host path of the static openshell-sandbox binary;
	// it is bind-mounted read-only into every sandbox as its entrypoint. Required.
	SupervisorBinary string `json:"supervisor_binary" toml:"supervisor_binary"`
	// GatewayEndpoint is the URL the supervisor dials; default
	// https://host.openshell.internal:<GatewayPort>.
	GatewayEndpoint string `json:"gateway_endpoint" toml:"gateway_endpoint"`
	// GatewayPort is the gateway's listening port on the host loopback. The driver
	// forwards <bridge gateway IP>:GatewayPort to 127.0.0.1:GatewayPort so containers
	// reach a loopback-only gateway. 0 = no forwarder (the gateway is reachable from
	// the bridge some other way).
	GatewayPort int `json:"gateway_port,omitempty" toml:"gateway_port"`
	// GatewayServesBridge says the gateway running this driver in-process listens on
	// <bridge gateway IP>:GatewayPort itself when asked (ListenerRequirements), so no
	// forwarder is started: the supervisors' connections skip a hop through this
	// process, which matters for file transfers.
	GatewayServesBridge bool `json:"-" toml:"-"`
	// CAPEM is the gateway CA bundle handed to each supervisor (optional for http://).
	CAPEM []byte `json:"-" toml:"-"`
	// StateDir holds per-sandbox token/CA files; default ~/.local/state/openshell/docker.
	StateDir string `json:"state_dir,omitempty" toml:"state_dir"`
	// DefaultImage is reported in capabilities and used when a sandbox names no image.
	DefaultImage string `json:"default_image,omitempty" toml:"default_image"`
	// Network is the dedicated bridge network; default "openshell".
	Network string `json:"network,omitempty" toml:"network"`
	// DefaultCPU and DefaultMemory (Kubernetes quantities) apply when a sandbox sets
	// no limit; empty = unlimited.
	DefaultCPU    string `json:"default_cpu,omitempty" toml:"default_cpu"`
	DefaultMemory string `json:"default_memory,omitempty" toml:"default_memory"`
	// MinMemory is the smallest memory limit accepted, in bytes; default 64 MiB.
	MinMemory int64 `json:"min_memory,omitempty" toml:"min_memory"`
	// PidsLimit caps processes per sandbox; default 4096, negative = unlimited.
	PidsLimit int64 `json:"pids_limit,omitempty" toml:"pids_limit"`
	// StopTimeout is how long Stop waits before SIGKILL; default 10s.
	StopTimeout time.Duration `json:"stop_timeout,omitempty" toml:"stop_timeout"`
	// ResyncInterval is how often Watch lists containers to repair missed events;
	// default 30s.
	ResyncInterval time.Duration `json:"resync_interval,omitempty" toml:"resync_interval"`
	// LogLevel is the supervisor's default log level when the sandbox sets none.
	LogLevel string `json:"log_level,omitempty" toml:"log_level"`
	// Labels are added to every container and network the driver creates and are
	// required on everything it lists and watches: they scope one driver instance
	// (e.g. a test run) on a shared daemon.
	Labels map[string]string `json:"labels,omitempty" toml:"labels"`
}

// withDefaults returns a copy with defaults filled in.
func (c Config) withDefaults() Config {
	if c.Host == "" {
		c.Host = os.Getenv("DOCKER_HOST")
	}
	if c.Host == "" {
		c.Host = "unix://" + defaultSocketPath
	}
	if c.GatewayEndpoint == "" && c.GatewayPort != 0 {
		c.GatewayEndpoint = fmt.Sprintf("https://%s:%d", GatewayHost, c.GatewayPort)
	}
	if c.Network == "" {
		c.Network = DefaultNetwork
	}
	if c.MinMemory == 0 {
		c.MinMemory = DefaultMinMemory
	}
	if c.PidsLimit == 0 {
		c.PidsLimit = DefaultPidsLimit
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = DefaultStopTimeout
	}
	if c.ResyncInterval == 0 {
		c.ResyncInterval = DefaultResync
	}
	if c.StateDir == "" {
		if home, err := os.UserHomeDir(); err == nil {
			c.StateDir = filepath.Join(home, defaultStateSubpath)
		}
	}
	return c
}

// Validate names the first bad field and how to fix it. It expects defaults filled.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("docker driver config: "+format, args...))
	}
	if c.Host != "" && !strings.Contains(c.Host, "://") {
		bad("host %q: want unix:///path/to/docker.sock or tcp://host:port", c.Host)
	}
	cs := containers.Settings{
		SupervisorBinary: c.SupervisorBinary, GatewayEndpoint: c.GatewayEndpoint, GatewayPort: c.GatewayPort,
		StateDir: c.StateDir, DefaultCPU: c.DefaultCPU, DefaultMemory: c.DefaultMemory, MinMemory: c.MinMemory,
		StopTimeout: c.StopTimeout, ResyncInterval: c.ResyncInterval,
	}
	cs.CheckFiles(bad, "", "the Docker daemon")
	if c.Network == "" {
		bad("network is empty")
	}
	cs.CheckLimits(bad)
	for k := range c.Labels {
		if k == LabelManagedBy || k == LabelSandboxID || k == LabelSandboxName {
			bad("labels: %q is reserved for the driver", k)
		}
	}
	return errors.Join(errs...)
}
