package driversel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/grpcdriver"
	"github.com/openshell/openshell/internal/binpath"
	"github.com/openshell/openshell/internal/hostcred"
	"github.com/openshell/openshell/internal/rundir"
)

func init() { Register("vm", newVM) }

// VMBinaryName is the VM driver executable.
const VMBinaryName = "openshell-driver-vm"

// vmTableFlags maps `[drivers.vm]` keys to the driver's flags (passed through).
var vmTableFlags = []struct{ key, flag string }{
	{"cpus", "--cpus"},
	{"memory_mib", "--memory-mib"},
	{"default_image", "--default-image"},
	{"kernel", "--kernel"},
	{"backend", "--backend"},
	{"accel", "--accel"},
	{"vsock_transport", "--vsock-transport"},
	{"supervisor_binary", "--supervisor-binary"},
	{"image_cache_dir", "--image-cache-dir"},
	{"disk_size", "--disk-size"},
	{"stop_timeout", "--stop-timeout"},
	{"egress_allow_private", "--egress-allow-private"},
	{"egress_ca_file", "--egress-ca-file"},
	{"resume_after_host_reboot", "--resume-after-host-reboot"},
}

// FindBinary looks for name next to the running executable, then on PATH.
func FindBinary(name, override string) (string, error) {
	p, err := binpath.Find(name, override)
	if err != nil && override == "" {
		return "", fmt.Errorf("%w, or set its path in the config file", err)
	}
	return p, err
}

// VMArgs builds the VM driver's command line.
func VMArgs(env DriverEnv, socket, stateDir string, gatewayPID int) ([]string, error) {
	args := []string{
		"--bind-socket", socket,
		"--expected-peer-pid", strconv.Itoa(gatewayPID),
		"--state-dir", stateDir,
		"--gateway-endpoint", "127.0.0.1:" + strconv.Itoa(env.GatewayPort),
	}
	if env.CAFile != "" {
		args = append(args, "--gateway-ca-file", env.CAFile)
	}
	if _, set := env.Table["supervisor_binary"]; !set && env.SupervisorBinary != "" {
		args = append(args, "--supervisor-binary", env.SupervisorBinary)
	}
	for _, kv := range vmTableFlags {
		v, ok := env.Table[kv.key]
		if !ok {
			continue
		}
		switch x := v.(type) {
		case string, int64, int, float64, bool:
			args = append(args, kv.flag+"="+fmt.Sprint(x))
		default:
			return nil, fmt.Errorf("[drivers.vm] %s: value %v must be a string, number or boolean", kv.key, v)
		}
	}
	// egress_allow_cidr is a list: one flag per entry.
	if v, ok := env.Table["egress_allow_cidr"]; ok {
		list, ok := v.([]any)
		if !ok {
			return nil, fmt.Errorf("[drivers.vm] egress_allow_cidr: value %v must be a list of CIDR strings, e.g. [\"10.0.0.0/8\"]", v)
		}
		for _, c := range list {
			s, ok := c.(string)
			if !ok {
				return nil, fmt.Errorf("[drivers.vm] egress_allow_cidr: entry %v must be a string", c)
			}
			args = append(args, "--egress-allow-cidr="+s)
		}
	}
	// pools is a table of tables ([drivers.vm.pools.NAME]): passed as JSON, which the
	// driver checks key by key.
	if v, ok := env.Table["pools"]; ok {
		if _, ok := v.(map[string]any); !ok {
			return nil, fmt.Errorf("[drivers.vm] pools: value %v must be a table of pools, e.g. [drivers.vm.pools.small] with size = 2", v)
		}
		b, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("[drivers.vm] pools: %w", err)
		}
		args = append(args, "--pools="+string(b))
	}
	valid := []string{"binary", "egress_allow_cidr", "pools"}
	for _, kv := range vmTableFlags {
		valid = append(valid, kv.key)
	}
	for k := range env.Table {
		if !slices.Contains(valid, k) {
			return nil, fmt.Errorf("[drivers.vm] unknown key %q; valid keys: %s", k, strings.Join(valid, ", "))
		}
	}
	return args, nil
}

// vmDriver is the VM driver client plus the child process that serves it.
type vmDriver struct {
	*grpcdriver.Client
	proc   *os.Process
	exited chan struct{}
	socket string // in the gateway's runtime dir
	// runnerKey derives each VM runner's credential for its sandbox's provider
	// values (package hostcred); the gateway checks it, the driver hands it out.
	runnerKey []byte
}

// newVM starts openshell-driver-vm on a private socket (directory 0700) and
// connects to it. Close stops the driver process by PID; its VMs (runner processes)
// keep running and are re-adopted by the next driver.
func newVM(ctx context.Context, env DriverEnv) (_ drivers.Driver, retErr error) {
	override, _ := env.Table["binary"].(string)
	bin, err := FindBinary(VMBinaryName, override)
	if err != nil {
		return nil, fmt.Errorf("vm driver: %w", err)
	}
	dir := filepath.Join(env.StateDir, "vm-driver")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("vm driver state dir: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	// The socket lives in a short runtime dir: under a long state dir its path would
	// not fit sun_path (107 bytes).
	run := rundir.For(dir)
	if err := rundir.Ensure(run); err != nil {
		return nil, fmt.Errorf("vm driver: %w", err)
	}
	socket := filepath.Join(run, "driver.sock")
	_ = os.Remove(socket) // stale from a previous run
	args, err := VMArgs(env, socket, dir, os.Getpid())
	if err != nil {
		return nil, err
	}
	// Kept across restarts: runners outlive the gateway and keep their credential.
	keyFile := filepath.Join(dir, hostcred.KeyFile)
	runnerKey, err := hostcred.LoadOrCreate(keyFile)
	if err != nil {
		return nil, fmt.Errorf("vm driver: %w", err)
	}
	args = append(args, "--runner-key-file", keyFile)
	logPath := filepath.Join(dir, "driver.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group: a Ctrl-C aimed at the gateway must not kill the driver
	// before the gateway has stopped using it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("vm driver: start %s: %w", bin, err)
	}
	d := &vmDriver{proc: cmd.Process, exited: make(chan struct{}), runnerKey: runnerKey, socket: socket}
	go func() { _ = cmd.Wait(); close(d.exited) }()
	defer func() {
		if retErr != nil {
			d.stop()
			d.removeSocket()
		}
	}()
	if env.Log != nil {
		env.Log.Info("started the VM driver", "pid", cmd.Process.Pid, "binary", bin, "socket", socket, "log", logPath)
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	go func() {
		select {
		case <-d.exited:
			cancel() // no point waiting for a dead process
		case <-dctx.Done():
		}
	}()
	c, err := grpcdriver.Dial(dctx, socket)
	if err != nil {
		return nil, fmt.Errorf("vm driver (pid %d) did not come up: %w; see %s%s", cmd.Process.Pid, err, logPath, logTail(logPath))
	}
	d.Client = c
	return d, nil
}

func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return ":\n" + strings.TrimSpace(string(b))
}

// stop sends SIGTERM to the driver process (by PID), then SIGKILL after 10 s.
func (d *vmDriver) stop() {
	select {
	case <-d.exited:
		return
	default:
	}
	_ = d.proc.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		_ = d.proc.Kill()
		<-d.exited
	}
}

// removeSocket removes the stopped driver's socket and, when empty, the gateway's
// runtime dir (also when the driver never came up).
func (d *vmDriver) removeSocket() {
	_ = os.Remove(d.socket)
	_ = os.Remove(filepath.Dir(d.socket))
}

func (d *vmDriver) Close() error {
	var err error
	if d.Client != nil {
		err = d.Client.Close()
	}
	d.stop()
	d.removeSocket()
	return errors.Join(err)
}

// RunnerKey implements gateway.RunnerKeyer.
func (d *vmDriver) RunnerKey() []byte { return d.runnerKey }

// PID returns the driver process id.
func (d *vmDriver) PID() int { return d.proc.Pid }
