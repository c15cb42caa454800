package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/gateway/clientconf"
	"github.com/openshell/openshell/gateway/config"
	"github.com/openshell/openshell/gateway/pki"
	"github.com/openshell/openshell/internal/procstat"
	"github.com/openshell/openshell/internal/version"
)

const (
	// gatewayBinEnv overrides where openshell-gateway is found (default: next to
	// this binary, else PATH).
	gatewayBinEnv = "OPENSHELL_GATEWAY_BIN"
	pidFileName   = "gateway.pid"
	logFileName   = "gateway.log"
	// stateDirFile records, in the client dir, which state dir a started gateway uses.
	stateDirFile = "state_dir"
)

// stateDirFor is the state directory `gateway start` uses for a gateway name: the
// gateway's own default for "default", a sibling directory otherwise.
func stateDirFor(name string) string {
	def := config.Defaults().StateDir
	if name == clientconf.DefaultName || name == "" {
		return def
	}
	return filepath.Join(filepath.Dir(def), "gateway-"+name)
}

// recordedStateDir returns the state dir a previous `gateway start` recorded.
func recordedStateDir(name string) string {
	if dir, err := clientconf.Dir(name); err == nil {
		if b, err := os.ReadFile(filepath.Join(dir, stateDirFile)); err == nil && strings.TrimSpace(string(b)) != "" {
			return strings.TrimSpace(string(b))
		}
	}
	return stateDirFor(name)
}

func (a *app) gatewayCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "gateway", Short: "Start, stop and inspect the local gateway"}
	cmd.AddCommand(a.gatewayStart(), a.gatewayStop(), a.gatewayStatus())
	return cmd
}

type startOptions struct {
	drivers, bind, stateDir, configFile, driverSocket string
	socketGroup                                       string
	port                                              int
	foreground, disableTLS                            bool
	wait                                              time.Duration
	// set reports whether the user gave a flag: only those are passed on, so the
	// config file's (and the environment's) values win over this command's defaults.
	set func(name string) bool
}

// gatewayArgs builds the gateway's command line from the flags the user set and
// resolves the settings the CLI needs to know (address, state dir) the way the
// gateway will: defaults < config file < environment < flags.
func (o startOptions) gatewayArgs(name string, getenv func(string) string) ([]string, *config.Config, error) {
	set := o.set
	if set == nil {
		set = func(string) bool { return false }
	}
	fs := pflag.NewFlagSet("openshell-gateway", pflag.ContinueOnError)
	config.BindFlags(fs)
	var args []string
	pass := func(flag, v string) error {
		if err := fs.Set(flag, v); err != nil {
			return fmt.Errorf("--%s: %w", flag, err)
		}
		args = append(args, "--"+flag, v)
		return nil
	}
	for _, f := range []struct {
		flag, v string
		given   bool
	}{
		{"port", strconv.Itoa(o.port), set("port")},
		{"bind-address", o.bind, set("bind-address")},
		{"drivers", o.drivers, o.drivers != ""},
		{"disable-tls", "true", o.disableTLS},
		{"config", o.configFile, o.configFile != ""},
		{"compute-driver-socket", o.driverSocket, o.driverSocket != ""},
		{"state-dir", o.stateDir, o.stateDir != ""},
		{"socket-group", o.socketGroup, o.socketGroup != ""},
	} {
		if f.given {
			if err := pass(f.flag, f.v); err != nil {
				return nil, nil, err
			}
		}
	}
	cfg, err := config.Resolve(fs, getenv)
	if err != nil {
		return nil, nil, err
	}
	if o.stateDir == "" && cfg.StateDir == config.Defaults().StateDir {
		// Neither the file nor the environment chose one: a per-name directory.
		if err := pass("state-dir", stateDirFor(name)); err != nil {
			return nil, nil, err
		}
		cfg.StateDir = stateDirFor(name)
	}
	return args, cfg, nil
}

func (a *app) gatewayStart() *cobra.Command {
	var o startOptions
	cmd := &cobra.Command{
		Use:   "start",
		Short: "Start a gateway on this machine and register it for the CLI",
		Long: `Start openshell-gateway (found next to this binary or on PATH), in the
background by default. The gateway's certificates are created on first start and the
client files are written to ~/.config/openshell/gateways/<name>/.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.set = func(name string) bool { return cmd.Flags().Changed(name) }
			return a.runGatewayStart(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.drivers, "drivers", "", "compute driver: docker, podman, kubernetes or vm (default: auto-detect)")
	f.IntVar(&o.port, "port", config.DefaultPort, "gRPC port")
	f.StringVar(&o.bind, "bind-address", "127.0.0.1", "listen address")
	f.StringVar(&o.stateDir, "state-dir", "", "gateway state directory (default: per gateway name under ~/.local/state/openshell)")
	f.StringVar(&o.configFile, "config", "", "gateway TOML configuration file")
	f.StringVar(&o.driverSocket, "compute-driver-socket", "", "attach to an external compute driver on this Unix socket")
	f.StringVar(&o.socketGroup, "socket-group", "", "group (name or gid) whose members may also use the gateway's Unix socket; makes it 0660 (default: only you and root, 0600)")
	f.BoolVar(&o.foreground, "foreground", false, "run in the foreground (logs to the terminal)")
	f.BoolVar(&o.disableTLS, "disable-tls", false, "plaintext, no client certificates (local development only)")
	f.DurationVar(&o.wait, "wait", 60*time.Second, "how long to wait for the background gateway to become healthy")
	return cmd
}

func (a *app) runGatewayStart(ctx context.Context, o startOptions) error {
	if o.drivers != "" {
		if _, err := config.ParseDriverName(o.drivers); err != nil {
			return err
		}
	}
	bin, err := findGateway()
	if err != nil {
		return err
	}
	args, cfg, err := o.gatewayArgs(a.gateway, os.Getenv)
	if err != nil {
		return err
	}
	stateDir := cfg.StateDir
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	pidPath := filepath.Join(stateDir, pidFileName)
	if pid, ok := runningPID(pidPath); ok {
		return fmt.Errorf("gateway %q is already running (pid %d); stop it with `openshell gateway stop`", a.gateway, pid)
	}

	host := cfg.BindAddress
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	scheme := "https"
	if cfg.DisableTLS {
		scheme = "http"
	}
	endpoint := scheme + "://" + net.JoinHostPort(host, strconv.Itoa(cfg.Port))
	dir, err := clientconf.WriteEndpoint(a.gateway, endpoint)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, stateDirFile), []byte(stateDir+"\n"), 0o600); err != nil {
		return err
	}
	// The CLI tries the local socket first and falls back to the endpoint.
	if err := clientconf.WriteSocket(a.gateway, cfg.SocketPath()); err != nil {
		return err
	}
	if !cfg.DisableTLS {
		// Create the PKI now (the gateway reuses it) so the client files exist before
		// the first call.
		b, err := pki.Ensure(config.PKIDir(stateDir), []string{host})
		if err != nil {
			return fmt.Errorf("gateway certificates: %w", err)
		}
		if err := pki.WriteClientDir(b, dir); err != nil {
			return err
		}
	}

	if o.foreground {
		fmt.Fprintf(os.Stderr, "gateway %q: %s (client files in %s)\n", a.gateway, endpoint, dir)
		return syscall.Exec(bin, append([]string{bin}, args...), os.Environ())
	}

	logPath := filepath.Join(stateDir, logFileName)
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	c := exec.Command(bin, args...)
	c.Stdout, c.Stderr = logf, logf
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // survive this terminal
	if err := c.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	if err := os.WriteFile(pidPath, []byte(strconv.Itoa(c.Process.Pid)+"\n"), 0o600); err != nil {
		_ = c.Process.Kill()
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- c.Wait() }()

	wctx, cancel := context.WithTimeout(ctx, o.wait)
	defer cancel()
	for {
		hctx, hcancel := context.WithTimeout(wctx, 2*time.Second)
		_, _, err := a.health(hctx)
		hcancel()
		if err == nil {
			break
		}
		select {
		case werr := <-exited:
			_ = os.Remove(pidPath)
			return fmt.Errorf("gateway exited during startup (%v); see %s%s", werr, logPath, tail(logPath))
		case <-wctx.Done():
			return fmt.Errorf("gateway (pid %d) did not become healthy within %s (%v); see %s", c.Process.Pid, o.wait, err, logPath)
		case <-time.After(200 * time.Millisecond):
		}
	}
	fmt.Printf("gateway %q started (pid %d) at %s\nlogs: %s\n", a.gateway, c.Process.Pid, endpoint, logPath)
	return nil
}

func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 1500 {
		b = b[len(b)-1500:]
	}
	return ":\n" + strings.TrimSpace(string(b))
}

// runningPID reads a pid file and reports whether that process is alive and is an
// openshell-gateway (a recycled PID is not ours).
func runningPID(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return 0, false
	}
	if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && !strings.Contains(string(cmdline), "openshell-gateway") {
		return 0, false
	}
	// A zombie has exited; it is not running.
	if st, err := procstat.Read(pid); err == nil && st.State == 'Z' {
		return 0, false
	}
	return pid, true
}

func (a *app) gatewayStop() *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "stop",
		Short: "Stop the gateway started with `openshell gateway start` (sandboxes keep running)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pidPath := filepath.Join(recordedStateDir(a.gateway), pidFileName)
			pid, ok := runningPID(pidPath)
			if !ok {
				_ = os.Remove(pidPath)
				return fmt.Errorf("gateway %q is not running (no live process in %s)", a.gateway, pidPath)
			}
			if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
				return fmt.Errorf("stop gateway pid %d: %w", pid, err)
			}
			deadline := time.Now().Add(timeout)
			for time.Now().Before(deadline) {
				if _, alive := runningPID(pidPath); !alive {
					_ = os.Remove(pidPath)
					fmt.Fprintf(cmd.OutOrStdout(), "gateway %q stopped (pid %d)\n", a.gateway, pid)
					return nil
				}
				time.Sleep(100 * time.Millisecond)
			}
			_ = syscall.Kill(pid, syscall.SIGKILL)
			_ = os.Remove(pidPath)
			fmt.Fprintf(cmd.OutOrStdout(), "gateway %q killed after %s (pid %d)\n", a.gateway, timeout, pid)
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 20*time.Second, "how long to wait before killing the gateway")
	return cmd
}

// health calls Health and returns the response and the driver header.
func (a *app) health(ctx context.Context) (*openshellv1.HealthResponse, string, error) {
	c, done, err := a.client(ctx)
	if err != nil {
		return nil, "", err
	}
	defer done()
	var md metadata.MD
	resp, err := c.Health(ctx, &openshellv1.HealthRequest{}, grpc.Header(&md), grpc.WaitForReady(false))
	if err != nil {
		return nil, "", err
	}
	driver := ""
	if v := md.Get(version.DriverHeader); len(v) > 0 {
		driver = v[0]
	}
	return resp, driver, nil
}

type gatewayStatus struct {
	Name     string `json:"name"`
	Endpoint string `json:"endpoint"`
	Healthy  bool   `json:"healthy"`
	Status   string `json:"status"`
	Version  string `json:"version,omitempty"`
	Driver   string `json:"driver,omitempty"`
	PID      int    `json:"pid,omitempty"`
	Error    string `json:"error,omitempty"`
}

func (a *app) gatewayStatus() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show whether the gateway is healthy, its version and compute driver",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(a.output); err != nil {
				return err
			}
			g, err := clientconf.Load(a.gateway)
			if err != nil {
				return err
			}
			st := gatewayStatus{Name: a.gateway, Endpoint: g.Endpoint, Status: "UNREACHABLE"}
			if pid, ok := runningPID(filepath.Join(recordedStateDir(a.gateway), pidFileName)); ok {
				st.PID = pid
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
			defer cancel()
			resp, driver, herr := a.health(ctx)
			if herr == nil {
				st.Status = strings.TrimPrefix(resp.GetStatus().String(), "SERVICE_STATUS_")
				st.Healthy = resp.GetStatus() == openshellv1.ServiceStatus_SERVICE_STATUS_HEALTHY
				st.Version, st.Driver = resp.GetVersion(), driver
			} else {
				st.Error = humanize(herr, a.gateway)
			}
			out := cmd.OutOrStdout()
			if a.output != "table" {
				if err := printStructured(out, a.output, st); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(out, "gateway:  %s\nendpoint: %s\nstatus:   %s\n", st.Name, st.Endpoint, st.Status)
				if st.Version != "" {
					fmt.Fprintf(out, "version:  %s\ndriver:   %s\n", st.Version, st.Driver)
				}
				if st.PID != 0 {
					fmt.Fprintf(out, "pid:      %d\n", st.PID)
				}
			}
			if herr != nil {
				return &exitError{code: 1, err: herr}
			}
			return nil
		},
	}
}
