package docker

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/openshell/openshell/drivers"
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
	DefaultMinMemory    = 64 << 20 // below this the supervisor itself does not start reliably
	DefaultPidsLimit    = 4096
	DefaultStopTimeout  = 10 * time.Second
	DefaultResync       = 30 * time.Second
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
	if c.SupervisorBinary == "" {
		bad("supervisor_binary is empty: set it to the host path of the static openshell-sandbox binary")
	} else if !filepath.IsAbs(c.SupervisorBinary) {
		bad("supervisor_binary %q is not an absolute path", c.SupervisorBinary)
	} else if st, err := os.Stat(c.SupervisorBinary); err != nil {
		bad("supervisor_binary: %w (build it with CGO_ENABLED=0 go build ./cmd/openshell-sandbox)", err)
	} else if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		bad("supervisor_binary %q is not an executable file", c.SupervisorBinary)
	}
	if c.GatewayEndpoint == "" {
		bad("gateway_endpoint is empty: set it to https://%s:<gateway port>", GatewayHost)
	} else if u, err := url.Parse(c.GatewayEndpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("gateway_endpoint %q: want an http(s) URL such as https://%s:17670", c.GatewayEndpoint, GatewayHost)
	}
	if c.GatewayPort < 0 || c.GatewayPort > 65535 {
		bad("gateway_port %d is out of range 0-65535", c.GatewayPort)
	}
	if c.StateDir == "" {
		bad("state_dir is empty: set it to a directory for per-sandbox files")
	} else if !filepath.IsAbs(c.StateDir) {
		bad("state_dir %q is not an absolute path (the Docker daemon bind-mounts files from it)", c.StateDir)
	}
	if c.Network == "" {
		bad("network is empty")
	}
	if c.DefaultCPU != "" {
		if _, err := parseCPU(c.DefaultCPU); err != nil {
			bad("default_cpu: %w", err)
		}
	}
	if c.DefaultMemory != "" {
		if m, err := parseMemory(c.DefaultMemory); err != nil {
			bad("default_memory: %w", err)
		} else if m < c.MinMemory {
			bad("default_memory %q is below min_memory (%d bytes)", c.DefaultMemory, c.MinMemory)
		}
	}
	if c.MinMemory < 0 {
		bad("min_memory %d is negative", c.MinMemory)
	}
	if c.StopTimeout < 0 || c.ResyncInterval < 0 {
		bad("stop_timeout and resync_interval must not be negative")
	}
	for k := range c.Labels {
		if k == LabelManagedBy || k == LabelSandboxID || k == LabelSandboxName {
			bad("labels: %q is reserved for the driver", k)
		}
	}
	return errors.Join(errs...)
}
