package podman

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/containers"
)

// Defaults filled by Config.withDefaults.
const (
	DefaultMinMemory    = containers.DefaultMinMemory
	DefaultPidsLimit    = containers.DefaultPidsLimit
	DefaultStopTimeout  = containers.DefaultStopTimeout
	DefaultResync       = containers.DefaultResync
	RootfulSocket       = "/run/podman/podman.sock"
	defaultStateSubpath = ".local/state/openshell/podman"
	// MinVersion is the oldest Podman the driver accepts (its API and netavark).
	MinVersion = 5
	// hostLoopback is where slirp4netns shows the host's loopback to a container
	// (allow_host_loopback=true).
	hostLoopback = "10.0.2.2"
)

// Config configures the Podman driver. Zero values are filled by defaults where noted.
type Config struct {
	// Socket is the Podman service socket (a path or unix:///path); default
	// $CONTAINER_HOST, else the user's $XDG_RUNTIME_DIR/podman/podman.sock when it
	// exists, else /run/podman/podman.sock.
	Socket string `json:"socket,omitempty" toml:"socket"`
	// SupervisorBinary is the host path of the static openshell-sandbox binary;
	// it is bind-mounted read-only into every sandbox as its entrypoint. Required.
	SupervisorBinary string `json:"supervisor_binary" toml:"supervisor_binary"`
	// GatewayPort is the gateway's port on the host loopback, which sandboxes reach
	// through slirp4netns; GatewayEndpoint is built from it when empty.
	GatewayPort int `json:"gateway_port,omitempty" toml:"gateway_port"`
	// GatewayEndpoint is the URL the supervisor dials; default
	// https://host.openshell.internal:<GatewayPort>.
	GatewayEndpoint string `json:"gateway_endpoint" toml:"gateway_endpoint"`
	// CAPEM is the gateway CA bundle handed to each supervisor (optional for http://).
	CAPEM []byte `json:"-" toml:"-"`
	// StateDir holds per-sandbox token/CA files; default ~/.local/state/openshell/podman.
	StateDir string `json:"state_dir,omitempty" toml:"state_dir"`
	// DefaultImage is reported in capabilities and used when a sandbox names no image.
	DefaultImage string `json:"default_image,omitempty" toml:"default_image"`
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
	// AllowCgroupsV1 lets the driver run on a cgroups v1 host. There a rootless
	// Podman cannot apply cpu/memory/pids limits at all (it drops them with a
	// warning), so by default such a host is refused; set this (or
	// OPENSHELL_PODMAN_ALLOW_CGROUPS_V1=1) only where unlimited rootless sandboxes are
	// acceptable, e.g. test machines.
	AllowCgroupsV1 bool `json:"allow_cgroups_v1,omitempty" toml:"allow_cgroups_v1"`
	// CDISpecDirs are the CDI spec directories the service reads; GPU requests are
	// resolved against them before a create. Default /etc/cdi and /var/run/cdi,
	// where Podman looks.
	CDISpecDirs []string `json:"cdi_spec_dirs,omitempty" toml:"cdi_spec_dirs"`
	// Labels are added to every container and network the driver creates and are
	// required on everything it lists and watches: they scope one driver instance
	// (e.g. a test run) on a shared service.
	Labels map[string]string `json:"labels,omitempty" toml:"labels"`
}

// EnvAllowCgroupsV1 set to 1/true has the effect of Config.AllowCgroupsV1.
const EnvAllowCgroupsV1 = "OPENSHELL_PODMAN_ALLOW_CGROUPS_V1"

// DefaultSocket is the socket the driver uses when none is configured:
// $CONTAINER_HOST (unix://), else the rootless user socket when it exists, else the
// rootful one.
func DefaultSocket() string {
	if h := os.Getenv("CONTAINER_HOST"); strings.HasPrefix(h, "unix://") {
		return strings.TrimPrefix(h, "unix://")
	}
	if os.Getuid() != 0 {
		run := os.Getenv("XDG_RUNTIME_DIR")
		if run == "" {
			run = filepath.Join("/run/user", strconv.Itoa(os.Getuid()))
		}
		if s := filepath.Join(run, "podman", "podman.sock"); exists(s) {
			return s
		}
	}
	return RootfulSocket
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// withDefaults returns a copy with defaults filled in.
func (c Config) withDefaults() Config {
	c.Socket = strings.TrimPrefix(c.Socket, "unix://")
	if c.Socket == "" {
		c.Socket = DefaultSocket()
	}
	if c.GatewayEndpoint == "" && c.GatewayPort != 0 {
		c.GatewayEndpoint = fmt.Sprintf("https://%s:%d", drivers.GatewayHost, c.GatewayPort)
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
	if len(c.CDISpecDirs) == 0 {
		c.CDISpecDirs = DefaultCDISpecDirs
	}
	if v := os.Getenv(EnvAllowCgroupsV1); v == "1" || strings.EqualFold(v, "true") {
		c.AllowCgroupsV1 = true
	}
	return c
}

// Validate names the first bad field and how to fix it. It expects defaults filled.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("podman driver config: "+format, args...))
	}
	if strings.Contains(c.Socket, "://") {
		bad("socket %q: want a Unix socket path or unix:///path (ssh:// and tcp:// services are not supported: the driver bind-mounts host files)", c.Socket)
	} else if !filepath.IsAbs(c.Socket) {
		bad("socket %q is not an absolute path", c.Socket)
	}
	cs := containers.Settings{
		SupervisorBinary: c.SupervisorBinary, GatewayEndpoint: c.GatewayEndpoint, GatewayPort: c.GatewayPort,
		StateDir: c.StateDir, DefaultCPU: c.DefaultCPU, DefaultMemory: c.DefaultMemory, MinMemory: c.MinMemory,
		StopTimeout: c.StopTimeout, ResyncInterval: c.ResyncInterval,
	}
	cs.CheckFiles(bad, " (or set gateway_port)", "Podman")
	cs.CheckLimits(bad)
	for k := range c.Labels {
		if strings.HasPrefix(k, "openshell.ai/") && k != labelTestRun {
			bad("labels: %q: the openshell.ai/ prefix is reserved for the driver", k)
		}
	}
	return errors.Join(errs...)
}

// labelTestRun scopes the driver's tests on a shared service.
const labelTestRun = "openshell.ai/test-run"
