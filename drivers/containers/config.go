package containers

import (
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/openshell/openshell/drivers"
)

// Defaults both container drivers fill in.
const (
	DefaultMinMemory   = 64 << 20 // below this the supervisor itself does not start reliably
	DefaultPidsLimit   = 4096
	DefaultStopTimeout = 10 * time.Second
	DefaultResync      = 30 * time.Second
)

// Settings are the config fields both container drivers have, for the checks
// below; bad collects one problem (format and args as for fmt.Errorf).
type Settings struct {
	SupervisorBinary string
	GatewayEndpoint  string
	GatewayPort      int
	StateDir         string
	DefaultCPU       string
	DefaultMemory    string
	MinMemory        int64
	StopTimeout      time.Duration
	ResyncInterval   time.Duration
}

// CheckFiles checks the supervisor binary, the gateway endpoint and port and the
// state dir. endpointFix is added to the fix for an empty endpoint; engine names
// what bind-mounts files from the state dir.
func (s Settings) CheckFiles(bad func(format string, args ...any), endpointFix, engine string) {
	if s.SupervisorBinary == "" {
		bad("supervisor_binary is empty: set it to the host path of the static openshell-sandbox binary")
	} else if !filepath.IsAbs(s.SupervisorBinary) {
		bad("supervisor_binary %q is not an absolute path", s.SupervisorBinary)
	} else if st, err := os.Stat(s.SupervisorBinary); err != nil {
		bad("supervisor_binary: %w (build it with CGO_ENABLED=0 go build ./cmd/openshell-sandbox)", err)
	} else if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		bad("supervisor_binary %q is not an executable file", s.SupervisorBinary)
	}
	if s.GatewayEndpoint == "" {
		bad("gateway_endpoint is empty: set it to https://%s:<gateway port>%s", drivers.GatewayHost, endpointFix)
	} else if u, err := url.Parse(s.GatewayEndpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("gateway_endpoint %q: want an http(s) URL such as https://%s:17670", s.GatewayEndpoint, drivers.GatewayHost)
	}
	if s.GatewayPort < 0 || s.GatewayPort > 65535 {
		bad("gateway_port %d is out of range 0-65535", s.GatewayPort)
	}
	if s.StateDir == "" {
		bad("state_dir is empty: set it to a directory for per-sandbox files")
	} else if !filepath.IsAbs(s.StateDir) {
		bad("state_dir %q is not an absolute path (%s bind-mounts files from it)", s.StateDir, engine)
	}
}

// CheckLimits checks the default resources, the smallest memory limit and the
// timeouts.
func (s Settings) CheckLimits(bad func(format string, args ...any)) {
	if s.DefaultCPU != "" {
		if _, err := drivers.ParseCPU(s.DefaultCPU); err != nil {
			bad("default_cpu: %w", err)
		}
	}
	if s.DefaultMemory != "" {
		if m, err := drivers.ParseMemory(s.DefaultMemory); err != nil {
			bad("default_memory: %w", err)
		} else if m < s.MinMemory {
			bad("default_memory %q is below min_memory (%d bytes)", s.DefaultMemory, s.MinMemory)
		}
	}
	if s.MinMemory < 0 {
		bad("min_memory %d is negative", s.MinMemory)
	}
	if s.StopTimeout < 0 || s.ResyncInterval < 0 {
		bad("stop_timeout and resync_interval must not be negative")
	}
}
