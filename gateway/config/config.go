// Package config is the gateway's configuration: one Config struct, filled from
// defaults, then a TOML file, then the environment, then command-line flags (each later
// source wins), validated once. Resolve is the only place that knows the precedence.
package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/spf13/pflag"

	"github.com/openshell/openshell/gateway/pki"
	"github.com/openshell/openshell/gateway/replica"
	"github.com/openshell/openshell/gateway/store"
	"github.com/openshell/openshell/internal/rundir"
)

// DefaultPort is the gateway's gRPC port.
const DefaultPort = 17670

// DefaultSSHSessionTTL is the default lifetime of SSH session tokens.
const DefaultSSHSessionTTL = time.Hour

// DriverNames are the values --drivers accepts (exactly one).
var DriverNames = []string{"docker", "podman", "kubernetes", "vm"}

// ParseDriverName validates a --drivers value: exactly one of DriverNames.
func ParseDriverName(v string) (string, error) {
	v = strings.TrimSpace(v)
	if strings.Contains(v, ",") {
		return "", fmt.Errorf("--drivers takes exactly one driver, got %q; pick one of %s", v, strings.Join(DriverNames, ", "))
	}
	if !slices.Contains(DriverNames, v) {
		return "", fmt.Errorf("--drivers %q is not a known driver; valid values: %s", v, strings.Join(DriverNames, ", "))
	}
	return v, nil
}

// Config is the gateway's resolved configuration.
type Config struct {
	BindAddress string `toml:"bind_address"`
	Port        int    `toml:"port"`
	DisableTLS  bool   `toml:"disable_tls"`
	// Driver is the compute driver name ("" = auto-detect). The TOML key is `driver`
	// because `[drivers.<name>]` tables hold per-driver options.
	Driver              string `toml:"driver"`
	ComputeDriverSocket string `toml:"compute_driver_socket"`
	StateDir            string `toml:"state_dir"`
	HealthPort          int    `toml:"health_port"`
	DatabaseURL         string `toml:"database_url"`
	LogFormat           string `toml:"log_format"` // text | json
	LogLevel            string `toml:"log_level"`  // debug | info | warn | error
	// SSHSessionTTL is how long a CreateSshSession token stays valid (TOML: a
	// duration string such as "15m").
	SSHSessionTTL time.Duration `toml:"ssh_session_ttl"`
	// ServicesPort is the loopback HTTP port that routes to exposed sandbox services
	// (0 = a free port, reported in the service URLs); ServicesDomain enables
	// host-based URLs <service>--<sandbox>.<domain>.
	ServicesPort   int    `toml:"services_port"`
	ServicesDomain string `toml:"services_domain"`
	// Socket is the Unix socket local CLI clients use (no TLS; the kernel names the
	// caller): "" = gateway.sock in the state dir's short runtime dir, "none" = no
	// socket. See SocketPath.
	Socket string `toml:"socket"`
	// SocketGroup (a group name or gid) makes the socket 0660 with that group, whose
	// members are then administrators like its owner; "" = owner only (0600).
	SocketGroup string `toml:"socket_group"`
	// ReplicaID, PeerAddress and PeerAdvertiseAddress make this gateway one of
	// several replicas on one database: PeerAddress is where its peer service listens
	// ("" = a single gateway, no peer service), PeerAdvertiseAddress where the others
	// dial it (default PeerAddress), ReplicaID its name (default the host name).
	ReplicaID            string `toml:"replica_id"`
	PeerAddress          string `toml:"peer_address"`
	PeerAdvertiseAddress string `toml:"peer_advertise_address"`
	// TLSHosts are more names (DNS names or IPs) the gateway's server certificate
	// carries, for clients that reach it by a name it cannot know, such as its
	// Kubernetes Service.
	TLSHosts []string `toml:"tls_hosts"`
	// ConfigFile is the TOML file the rest was read from ("" = none).
	ConfigFile string `toml:"-"`
	// DriverTables holds the `[drivers.<name>]` tables, passed verbatim to the driver.
	DriverTables map[string]map[string]any `toml:"drivers"`
}

// Setting describes one configuration knob: its flag, environment variable and TOML key.
type Setting struct {
	Flag, Env, TOML, Usage string
}

// Settings lists every knob in flag order. Names here are the public interface.
var Settings = []Setting{
	{"bind-address", "OPENSHELL_BIND_ADDRESS", "bind_address", "address the gRPC API listens on"},
	{"port", "OPENSHELL_SERVER_PORT", "port", "gRPC API port"},
	{"disable-tls", "OPENSHELL_DISABLE_TLS", "disable_tls", "serve plaintext gRPC without mTLS (local development only)"},
	{"drivers", "OPENSHELL_DRIVERS", "driver", "compute driver: one of " + strings.Join(DriverNames, ", ") + " (empty = auto-detect)"},
	{"config", "OPENSHELL_GATEWAY_CONFIG", "", "TOML configuration file"},
	{"compute-driver-socket", "OPENSHELL_COMPUTE_DRIVER_SOCKET", "compute_driver_socket", "attach to an already running compute driver on this Unix socket"},
	{"state-dir", "OPENSHELL_STATE_DIR", "state_dir", "directory for certificates, keys, the database and driver state"},
	{"health-port", "OPENSHELL_HEALTH_PORT", "health_port", "HTTP port for /healthz, /readyz and /metrics (0 = off)"},
	{"database-url", "OPENSHELL_DATABASE_URL", "database_url", "PostgreSQL DSN (default: embedded SQLite in the state dir)"},
	{"log-format", "OPENSHELL_LOG_FORMAT", "log_format", "log format: text or json"},
	{"log-level", "OPENSHELL_LOG_LEVEL", "log_level", "log level: debug, info, warn or error"},
	{"ssh-session-ttl", "OPENSHELL_SSH_SESSION_TTL", "ssh_session_ttl", "lifetime of SSH/exec session tokens (e.g. 1h, 15m; at least 1s)"},
	{"services-port", "OPENSHELL_SERVICES_PORT", "services_port", "loopback HTTP port routing to exposed sandbox services (0 = a free port)"},
	{"services-domain", "OPENSHELL_SERVICES_DOMAIN", "services_domain", "DNS domain for host-based service URLs <service>--<sandbox>.<domain> (empty = path URLs only)"},
	{"socket", "OPENSHELL_SOCKET", "socket", "Unix socket for local CLI clients, no TLS, caller known by uid (default: gateway.sock in the short runtime dir; none = no socket)"},
	{"socket-group", "OPENSHELL_SOCKET_GROUP", "socket_group", "group (name or gid) whose members may use the Unix socket as administrators; makes it 0660 (default: owner and root only, 0600)"},
	{"peer-address", "OPENSHELL_PEER_ADDRESS", "peer_address", "several replicas on one database: host:port where this replica's peer service listens for the others (mTLS with the gateway certificate; empty = a single gateway)"},
	{"peer-advertise-address", "OPENSHELL_PEER_ADVERTISE_ADDRESS", "peer_advertise_address", "host:port the other replicas dial to reach this one (default: --peer-address; required when that listens on 0.0.0.0; in Kubernetes the pod IP)"},
	{"tls-hosts", "OPENSHELL_TLS_HOSTS", "tls_hosts", "more DNS names or IP addresses for the gateway's server certificate, comma-separated (e.g. its Kubernetes Service name; the host name and bind address are always in it)"},
	{"replica-id", "OPENSHELL_REPLICA_ID", "replica_id", "this replica's name among several on one database (default: the host name; in Kubernetes the pod name)"},
}

// Defaults returns the built-in defaults. StateDir defaults to the directory of the
// default database path ($XDG_STATE_HOME/openshell/gateway).
func Defaults() Config {
	c := Config{
		BindAddress: "127.0.0.1",
		Port:        DefaultPort,
		LogFormat:   "text",
		LogLevel:    "info",

		SSHSessionTTL: DefaultSSHSessionTTL,
	}
	if p, err := store.DefaultPath(); err == nil {
		c.StateDir = filepath.Dir(p)
	}
	return c
}

// BindFlags registers every setting on fs with the defaults shown in help.
func BindFlags(fs *pflag.FlagSet) {
	d := Defaults()
	for _, s := range Settings {
		usage := s.Usage + " (env " + s.Env + ")"
		switch s.Flag {
		case "port":
			fs.Int(s.Flag, d.Port, usage)
		case "health-port", "services-port":
			fs.Int(s.Flag, 0, usage)
		case "disable-tls":
			fs.Bool(s.Flag, false, usage)
		case "ssh-session-ttl":
			fs.Duration(s.Flag, d.SSHSessionTTL, usage)
		default:
			def := ""
			switch s.Flag {
			case "bind-address":
				def = d.BindAddress
			case "state-dir":
				def = d.StateDir
			case "log-format":
				def = d.LogFormat
			case "log-level":
				def = d.LogLevel
			}
			fs.String(s.Flag, def, usage)
		}
	}
}

// Resolve builds the configuration: defaults < TOML file < environment < flags. fs may
// be nil (no flags); getenv may be nil (no environment). Only flags that were set on
// the command line count (pflag's Changed), so a flag's default never hides the
// environment.
func Resolve(fs *pflag.FlagSet, getenv func(string) string) (*Config, error) {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	flagVal := func(name string) (string, bool) {
		if fs == nil {
			return "", false
		}
		f := fs.Lookup(name)
		if f == nil || !f.Changed {
			return "", false
		}
		return f.Value.String(), true
	}
	cfg := Defaults()

	// The config file's own location: flag > env.
	path := getenv("OPENSHELL_GATEWAY_CONFIG")
	if v, ok := flagVal("config"); ok {
		path = v
	}
	if path != "" {
		var file Config
		md, err := toml.DecodeFile(path, &file)
		if err != nil {
			return nil, fmt.Errorf("config file %s: %w; fix the TOML syntax or point --config elsewhere", path, err)
		}
		if und := md.Undecoded(); len(und) > 0 {
			var keys []string
			for _, k := range und {
				if len(k) > 0 && k[0] == "drivers" {
					continue // driver tables are free-form; the driver checks them
				}
				keys = append(keys, k.String())
			}
			if len(keys) > 0 {
				return nil, fmt.Errorf("config file %s: unknown keys %s; valid top-level keys are %s and [drivers.<name>] tables",
					path, strings.Join(keys, ", "), strings.Join(tomlKeys(), ", "))
			}
		}
		for _, s := range Settings {
			if s.TOML == "" || !md.IsDefined(s.TOML) {
				continue
			}
			applyFrom(&cfg, &file, s.TOML)
		}
		cfg.DriverTables = file.DriverTables
		cfg.ConfigFile = path
	}

	for _, s := range Settings {
		if s.TOML == "" {
			continue
		}
		v, set := getenv(s.Env), false
		set = v != ""
		src := "environment variable " + s.Env
		if fv, ok := flagVal(s.Flag); ok {
			v, set, src = fv, true, "flag --"+s.Flag
		}
		if !set {
			continue
		}
		if err := setString(&cfg, s.TOML, v); err != nil {
			return nil, fmt.Errorf("%s: %w", src, err)
		}
	}
	return &cfg, nil
}

func tomlKeys() []string {
	var ks []string
	for _, s := range Settings {
		if s.TOML != "" {
			ks = append(ks, s.TOML)
		}
	}
	return ks
}

// applyFrom copies one field (by TOML key) from src to dst.
func applyFrom(dst, src *Config, key string) {
	switch key {
	case "bind_address":
		dst.BindAddress = src.BindAddress
	case "port":
		dst.Port = src.Port
	case "disable_tls":
		dst.DisableTLS = src.DisableTLS
	case "driver":
		dst.Driver = src.Driver
	case "compute_driver_socket":
		dst.ComputeDriverSocket = src.ComputeDriverSocket
	case "state_dir":
		dst.StateDir = src.StateDir
	case "health_port":
		dst.HealthPort = src.HealthPort
	case "database_url":
		dst.DatabaseURL = src.DatabaseURL
	case "log_format":
		dst.LogFormat = src.LogFormat
	case "log_level":
		dst.LogLevel = src.LogLevel
	case "ssh_session_ttl":
		dst.SSHSessionTTL = src.SSHSessionTTL
	case "services_port":
		dst.ServicesPort = src.ServicesPort
	case "services_domain":
		dst.ServicesDomain = src.ServicesDomain
	case "socket":
		dst.Socket = src.Socket
	case "socket_group":
		dst.SocketGroup = src.SocketGroup
	case "replica_id":
		dst.ReplicaID = src.ReplicaID
	case "peer_address":
		dst.PeerAddress = src.PeerAddress
	case "peer_advertise_address":
		dst.PeerAdvertiseAddress = src.PeerAdvertiseAddress
	case "tls_hosts":
		dst.TLSHosts = src.TLSHosts
	}
}

// setString parses a string (flag or environment value) into the field for key.
func setString(c *Config, key, v string) error {
	switch key {
	case "port", "health_port", "services_port":
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("%s %q is not a number", key, v)
		}
		switch key {
		case "port":
			c.Port = n
		case "health_port":
			c.HealthPort = n
		default:
			c.ServicesPort = n
		}
	case "disable_tls":
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("disable_tls %q is not a boolean (use true or false)", v)
		}
		c.DisableTLS = b
	case "ssh_session_ttl":
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("ssh_session_ttl %q is not a duration (use e.g. 1h, 15m or 30s)", v)
		}
		c.SSHSessionTTL = d
	default:
		var tmp Config
		switch key {
		case "bind_address":
			tmp.BindAddress = v
		case "driver":
			tmp.Driver = v
		case "compute_driver_socket":
			tmp.ComputeDriverSocket = v
		case "state_dir":
			tmp.StateDir = v
		case "database_url":
			tmp.DatabaseURL = v
		case "log_format":
			tmp.LogFormat = v
		case "log_level":
			tmp.LogLevel = v
		case "services_domain":
			tmp.ServicesDomain = v
		case "socket":
			tmp.Socket = v
		case "socket_group":
			tmp.SocketGroup = v
		case "replica_id":
			tmp.ReplicaID = v
		case "peer_address":
			tmp.PeerAddress = v
		case "peer_advertise_address":
			tmp.PeerAdvertiseAddress = v
		case "tls_hosts":
			for _, h := range strings.Split(v, ",") {
				if h = strings.TrimSpace(h); h != "" {
					tmp.TLSHosts = append(tmp.TLSHosts, h)
				}
			}
		default:
			return fmt.Errorf("unknown setting %q", key)
		}
		applyFrom(c, &tmp, key)
	}
	return nil
}

// Validate names the first bad field and how to fix it.
func (c *Config) Validate() error {
	var errs []error
	if net.ParseIP(c.BindAddress) == nil && c.BindAddress != "localhost" {
		errs = append(errs, fmt.Errorf("bind_address %q is not an IP address; use e.g. 127.0.0.1 or 0.0.0.0", c.BindAddress))
	}
	if c.DisableTLS && !IsLoopback(c.BindAddress) {
		// Without TLS there is no client certificate: every caller without a sandbox
		// token is the local user, an administrator. Only this machine may call.
		errs = append(errs, fmt.Errorf("disable_tls is set with bind_address %q, which is not a loopback address: a plaintext gateway treats every caller as an administrator, so it may only listen on loopback; use --bind-address 127.0.0.1 (or ::1), or drop --disable-tls and let clients use mTLS", c.BindAddress))
	}
	if c.Port < 0 || c.Port > 65535 {
		errs = append(errs, fmt.Errorf("port %d is out of range; use 1-65535 (0 picks a free port)", c.Port))
	}
	if c.HealthPort < 0 || c.HealthPort > 65535 {
		errs = append(errs, fmt.Errorf("health_port %d is out of range; use 0 (off) or 1-65535", c.HealthPort))
	}
	if c.ServicesPort < 0 || c.ServicesPort > 65535 {
		errs = append(errs, fmt.Errorf("services_port %d is out of range; use 0 (a free port) or 1-65535", c.ServicesPort))
	}
	if d := strings.TrimSuffix(c.ServicesDomain, "."); d != "" && (len(d) > 200 || strings.Contains(d, "..") || strings.Trim(strings.ToLower(d), "abcdefghijklmnopqrstuvwxyz0123456789-.") != "") {
		errs = append(errs, fmt.Errorf("services_domain %q is not a DNS name; use e.g. svc.example.test (lowercase letters, digits, '-' and '.')", c.ServicesDomain))
	}
	if c.Driver != "" && !slices.Contains(DriverNames, c.Driver) && c.ComputeDriverSocket == "" {
		errs = append(errs, fmt.Errorf("drivers %q is not a known driver; use exactly one of %s", c.Driver, strings.Join(DriverNames, ", ")))
	}
	if c.StateDir == "" {
		errs = append(errs, errors.New("state_dir is empty; set --state-dir or HOME"))
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("log_format %q is not supported; use text or json", c.LogFormat))
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "warning", "error":
	default:
		errs = append(errs, fmt.Errorf("log_level %q is not supported; use debug, info, warn or error", c.LogLevel))
	}
	if c.SSHSessionTTL < time.Second {
		errs = append(errs, fmt.Errorf("ssh_session_ttl %v is too short; use at least 1s (default %v)", c.SSHSessionTTL, DefaultSSHSessionTTL))
	}
	if u := c.DatabaseURL; u != "" && !strings.HasPrefix(u, "postgres://") && !strings.HasPrefix(u, "postgresql://") && !strings.Contains(u, "=") {
		errs = append(errs, fmt.Errorf("database_url must be a PostgreSQL DSN (postgres://user:pass@host/db or host=... dbname=...); leave it empty for the embedded SQLite database"))
	}
	for _, h := range c.TLSHosts {
		if err := pki.CheckHost(h); err != nil {
			errs = append(errs, fmt.Errorf("tls_hosts: %w", err))
		}
	}
	errs = append(errs, c.validateSocket()...)
	errs = append(errs, c.validatePeer()...)
	return errors.Join(errs...)
}

// MaxSocketPath is the longest Unix socket path the kernel accepts (sun_path).
const MaxSocketPath = 107

func (c *Config) validateSocket() []error {
	var errs []error
	switch {
	case c.Socket == "none" || c.Socket == "":
	case !filepath.IsAbs(c.Socket):
		errs = append(errs, fmt.Errorf("socket %q is not an absolute path; use e.g. /run/openshell.sock, or none for no socket", c.Socket))
	}
	if p := c.SocketPath(); len(p) > MaxSocketPath {
		errs = append(errs, fmt.Errorf("socket path %s is %d bytes, over the kernel's %d; set socket to a shorter path", p, len(p), MaxSocketPath))
	}
	if c.SocketGroup != "" && c.Socket == "none" {
		errs = append(errs, fmt.Errorf("socket_group %q is set but socket is none; drop socket_group or enable the socket", c.SocketGroup))
	}
	return errs
}

// SocketPath is where the gateway serves local clients, "" when the socket is off.
// The default lives in the state dir's short runtime dir, whatever the state dir's
// length: a path must fit sun_path.
func (c *Config) SocketPath() string {
	switch c.Socket {
	case "none":
		return ""
	case "":
		if c.StateDir == "" {
			return ""
		}
		return filepath.Join(rundir.For(c.StateDir), "gateway.sock")
	}
	return c.Socket
}

// DriverTable returns the `[drivers.<name>]` table (never nil).
func (c *Config) DriverTable(name string) map[string]any {
	if t := c.DriverTables[name]; t != nil {
		return t
	}
	return map[string]any{}
}

// IsLoopback reports whether a bind address only accepts connections from this
// machine: a loopback IP or "localhost". The unspecified address (0.0.0.0, ::) is
// not loopback.
func IsLoopback(addr string) bool {
	if addr == "localhost" {
		return true
	}
	ip := net.ParseIP(addr)
	return ip != nil && ip.IsLoopback()
}

// Addr is the gRPC listen address.
func (c *Config) Addr() string { return net.JoinHostPort(c.BindAddress, strconv.Itoa(c.Port)) }

// DatabasePath is the SQLite file used when DatabaseURL is empty.
func (c *Config) DatabasePath() string { return filepath.Join(c.StateDir, "openshell.db") }

// Getenv is os.Getenv, named so callers read well: config.Resolve(fs, config.Getenv).
var Getenv = os.Getenv

// PKIDir is where a gateway keeps its CA and certificates inside its state directory.
// The CLI (gateway start) and the gateway itself both use it.
func PKIDir(stateDir string) string { return filepath.Join(stateDir, "pki") }

func (c *Config) validatePeer() []error {
	if c.PeerAddress == "" {
		if c.PeerAdvertiseAddress != "" {
			return []error{errors.New("peer_advertise_address is set without peer_address; set peer_address (where the peer service listens) too")}
		}
		return nil
	}
	var errs []error
	if c.DisableTLS {
		errs = append(errs, errors.New("peer_address is set with disable_tls: replicas authenticate each other with the gateway certificate; drop --disable-tls"))
	}
	if _, err := replica.ParsePeerAddress("peer_address", c.PeerAddress, false); err != nil {
		errs = append(errs, err)
	}
	if _, err := c.PeerAdvertise(); err != nil {
		errs = append(errs, err)
	}
	if strings.ContainsAny(c.ReplicaID, " \t\n/") || len(c.ReplicaID) > 253 {
		errs = append(errs, fmt.Errorf("replica_id %q: use a name without spaces or slashes (default: the host name)", c.ReplicaID))
	}
	return errs
}

// PeerAdvertise is the address other replicas dial: peer_advertise_address, else
// peer_address.
func (c *Config) PeerAdvertise() (string, error) {
	if c.PeerAdvertiseAddress != "" {
		return replica.ParsePeerAddress("peer_advertise_address", c.PeerAdvertiseAddress, true)
	}
	a, err := replica.ParsePeerAddress("peer_address", c.PeerAddress, true)
	if err != nil {
		return "", fmt.Errorf("%w; or set peer_advertise_address", err)
	}
	return a, nil
}
