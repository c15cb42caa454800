// Command openshell-driver-vm is the VM compute driver process. The gateway starts it
// with --bind-socket and --expected-peer-pid and speaks the compute contract over that
// private socket. The same binary is each VM's runner (`openshell-driver-vm runner
// --state-dir DIR`), re-executed by the driver in its own session, and can print the
// host check (`openshell-driver-vm doctor`).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/openshell/openshell/drivers/grpcdriver"
	"github.com/openshell/openshell/drivers/vm"
	"github.com/openshell/openshell/drivers/vm/peercred"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "runner":
			log := newLogger(stderr, "info")
			// The runner ignores SIGHUP (its session has no terminal, but be sure) and
			// handles SIGTERM itself as a graceful stop.
			signal.Ignore(syscall.SIGHUP)
			if err := vm.RunnerMain(context.Background(), args[1:], stderr, log); err != nil {
				log.Error("runner failed", "err", err)
				return 1
			}
			return 0
		case "doctor":
			return doctor(args[1:], stdout, stderr)
		}
	}
	return serve(args, stderr)
}

type flags struct {
	cfg             vm.Config
	bindSocket      string
	expectedPeerPID int
	allowTCP        bool
	bindAddress     string
	logLevel        string
}

func parse(name string, args []string, stderr io.Writer) (*flags, error) {
	f := &flags{}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &f.cfg
	fs.StringVar(&f.bindSocket, "bind-socket", "", "serve the compute driver on this Unix socket (its directory is created 0700)")
	fs.IntVar(&f.expectedPeerPID, "expected-peer-pid", 0, "only this process (and only the same user) may connect to --bind-socket; 0 = any process of the same user")
	fs.BoolVar(&f.allowTCP, "allow-unauthenticated-tcp", false, "also serve on TCP --bind-address WITHOUT any authentication (testing only)")
	fs.StringVar(&f.bindAddress, "bind-address", "", "TCP address for --allow-unauthenticated-tcp")
	fs.StringVar(&c.StateDir, "state-dir", "", "driver state directory (default $XDG_STATE_HOME/openshell/vm)")
	fs.StringVar(&c.GatewayEndpoint, "gateway-endpoint", "", "gateway TCP host:port that guest sessions are bridged to")
	fs.StringVar(&c.GatewayCAFile, "gateway-ca-file", "", "PEM CA of the gateway's TLS certificate (empty = plaintext gateway)")
	fs.StringVar(&c.GatewayServerName, "gateway-server-name", "", "TLS server name the guest uses for the gateway (default host.openshell.internal)")
	fs.IntVar(&c.CPUs, "cpus", 0, fmt.Sprintf("default vCPUs per sandbox (default %d)", vm.DefaultCPUs))
	fs.IntVar(&c.MemoryMiB, "memory-mib", 0, fmt.Sprintf("default guest memory in MiB (default %d)", vm.DefaultMemoryMiB))
	fs.StringVar(&c.DiskSize, "disk-size", "", "writable disk size per sandbox (default "+vm.DefaultDiskSize+")")
	fs.DurationVar(&c.StopTimeout, "stop-timeout", 0, "graceful guest shutdown bound before the VM is killed (default 30s)")
	fs.StringVar(&c.DefaultImage, "default-image", "", "image for sandboxes that name none (default "+vm.DefaultImage+")")
	fs.StringVar(&c.Kernel, "kernel", "", "guest kernel (default: the one scripts/setup-vm-host.sh installed)")
	fs.StringVar(&c.Backend, "backend", "", "VMM backend: auto, qemu, libkrun or vz (default auto: vz on macOS, libkrun with its library and hardware KVM, else qemu)")
	fs.StringVar(&c.Accel, "accel", "", "qemu: auto, kvm or tcg (default auto)")
	fs.StringVar(&c.Transport, "vsock-transport", "", "auto, vhost-vsock, vhost-user-vsock or virtio-serial (default auto)")
	fs.StringVar(&c.SupervisorBinary, "supervisor-binary", "", "static openshell-sandbox for the guest (default: next to this binary, then PATH)")
	fs.StringVar(&c.ImageCacheDir, "image-cache-dir", "", "image cache (default <state-dir>/images)")
	fs.BoolVar(&c.EgressAllowPrivate, "egress-allow-private", false, "let guests' egress reach loopback/private/link-local addresses (refused by default)")
	fs.Func("egress-allow-cidr", "CIDR guests' egress may reach despite the private-address rule (repeatable)", func(s string) error {
		c.EgressAllowCIDRs = append(c.EgressAllowCIDRs, s)
		return nil
	})
	fs.StringVar(&c.EgressCAFile, "egress-ca-file", "", "PEM CA bundle runners trust besides the system roots for the TLS they originate for guests (provider hosts)")
	fs.StringVar(&c.RunnerKeyFile, "runner-key-file", "", "the gateway's runner key: runners derive their sandbox's credential for provider values from it (set by the gateway)")
	fs.IntVar(&c.GPUMaxSandboxes, "gpu-max-sandboxes", 0, "at most this many sandboxes of the host hold passed-through GPUs at once (0 = no cap)")
	fs.StringVar(&c.GPUStateDir, "gpu-state-dir", "", "host-wide GPU lock and journal of devices moved to vfio-pci (default /var/lib/openshell/gpu)")
	fs.Func("pools", `warm pools as JSON, by name: {"small":{"size":2,"image":"…","cpus":1,"memory_mib":512,"disk_size":"2Gi"}} (the gateway passes [drivers.vm.pools.NAME])`, func(s string) error {
		dec := json.NewDecoder(strings.NewReader(s))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&c.Pools); err != nil {
			return fmt.Errorf("pools: %w (keys of a pool: size, image, cpus, memory_mib, disk_size)", err)
		}
		return nil
	})
	resume := true
	fs.BoolVar(&resume, "resume-after-host-reboot", true, "start sandboxes that a host reboot cut off again when the driver starts (false: they stay failed until `sandbox start`)")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	c.ResumeAfterHostReboot = &resume
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return f, nil
}

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		l = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
}

func serve(args []string, stderr io.Writer) int {
	f, err := parse("openshell-driver-vm", args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "openshell-driver-vm:", err)
		return 2
	}
	log := newLogger(stderr, f.logLevel)
	if f.bindSocket == "" && !f.allowTCP {
		fmt.Fprintln(stderr, "openshell-driver-vm: --bind-socket is required (or --allow-unauthenticated-tcp with --bind-address)")
		return 2
	}
	if f.allowTCP != (f.bindAddress != "") {
		fmt.Fprintln(stderr, "openshell-driver-vm: --allow-unauthenticated-tcp and --bind-address go together")
		return 2
	}
	if f.cfg.StateDir != "" && !filepath.IsAbs(f.cfg.StateDir) {
		if abs, err := filepath.Abs(f.cfg.StateDir); err == nil {
			f.cfg.StateDir = abs
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	d, err := vm.New(f.cfg, log)
	if err != nil {
		fmt.Fprintln(stderr, "openshell-driver-vm:", err)
		return 1
	}
	defer d.Close()
	if err := vm.PrioritizeControlPlane(); err != nil {
		log.Info("the control plane keeps the VMs' scheduling priority (creates slow down while VMs are busy)", "err", err)
	}

	var lns []net.Listener
	if f.bindSocket != "" {
		l, err := peercred.Listen(f.bindSocket, peercred.Policy{UID: os.Getuid(), PID: f.expectedPeerPID}, log)
		if err != nil {
			fmt.Fprintln(stderr, "openshell-driver-vm:", err)
			return 1
		}
		defer os.Remove(f.bindSocket)
		if f.expectedPeerPID == 0 {
			log.Warn("no --expected-peer-pid: any process of this user may drive VMs through the socket", "socket", f.bindSocket)
		}
		log.Info("serving the compute driver", "socket", f.bindSocket, "expected_peer_pid", f.expectedPeerPID, "state_dir", d.Config().StateDir)
		lns = append(lns, l)
	}
	if f.allowTCP {
		l, err := net.Listen("tcp", f.bindAddress)
		if err != nil {
			fmt.Fprintln(stderr, "openshell-driver-vm:", err)
			return 1
		}
		log.Warn("!!! SERVING THE VM DRIVER ON TCP WITHOUT ANY AUTHENTICATION: anyone who can reach this address can create and control VMs !!!", "address", l.Addr().String())
		lns = append(lns, l)
	}
	if f.expectedPeerPID != 0 {
		// The gateway that started us is our only client: when it is gone (even
		// killed -9), exit, so a restarted gateway's new driver owns the state dir.
		go func() {
			if err := peercred.WaitExit(ctx, f.expectedPeerPID); err == nil {
				log.Warn("the expected peer (gateway) exited; stopping the driver", "peer_pid", f.expectedPeerPID)
				stop()
			}
		}()
	}
	errc := make(chan error, len(lns))
	for _, l := range lns {
		go func() { errc <- grpcdriver.Serve(ctx, l, d) }()
	}
	for range lns {
		if err := <-errc; err != nil {
			log.Error("serve", "err", err)
			stop()
		}
	}
	log.Info("driver stopped; VM runners keep running and are re-adopted on the next start")
	return 0
}

func doctor(args []string, stdout, stderr io.Writer) int {
	jsonOut := false
	rest := args[:0:0]
	for _, a := range args {
		if a == "--json" || a == "-json" {
			jsonOut = true
			continue
		}
		rest = append(rest, a)
	}
	// Doctor does not need a gateway; give the config a placeholder so parsing works.
	f, err := parse("openshell-driver-vm doctor", rest, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "openshell-driver-vm doctor:", err)
		return 2
	}
	r := vm.Doctor(context.Background(), f.cfg)
	if jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(r)
	} else {
		fmt.Fprintf(stdout, "vmm backend:   %s (%s)\n", r.Backend, r.BackendReason)
		fmt.Fprintf(stdout, "accelerator:   %s (%s)\n", r.Accel, r.AccelReason)
		fmt.Fprintf(stdout, "vsock channel: %s (%s)\n", r.Transport, r.TransportReason)
		fmt.Fprintf(stdout, "guest kernel:  %s\n", orNone(r.Kernel))
		fmt.Fprintf(stdout, "supervisor:    %s\n", orNone(r.Supervisor))
		fmt.Fprintf(stdout, "default image: %s\n", r.DefaultImage)
		for _, p := range r.Pools {
			var rss []string
			for _, b := range p.IdleRSSBytes {
				rss = append(rss, fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)))
			}
			fmt.Fprintf(stdout, "warm pool %s: %d idle, %d booting (size %d; %s, %d vCPU, %d MiB); idle VMs' host RSS: %s\n",
				p.Name, p.Idle, p.Booting, p.Size, p.Image, p.VCPUs, p.MemoryMiB, orNone(strings.Join(rss, ", ")))
		}
		for _, m := range r.Missing {
			fmt.Fprintf(stdout, "MISSING: %s\n  fix: %s\n", m.What, m.Fix)
		}
		if r.OK() {
			fmt.Fprintln(stdout, "ok: this host can run VM sandboxes")
		}
	}
	if !r.OK() {
		return 1
	}
	return 0
}

func orNone(s string) string {
	if strings.TrimSpace(s) == "" {
		return "(none)"
	}
	return s
}
