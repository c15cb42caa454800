package vm

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"

	"github.com/openshell/openshell/drivers/vm/internal/runner"
	"github.com/openshell/openshell/drivers/vm/internal/state"
	"github.com/openshell/openshell/images"
	"github.com/openshell/openshell/vmm"
	"github.com/openshell/openshell/vmm/channel"
	"github.com/openshell/openshell/vmm/qemu"
)

// RunnerMain is the `openshell-driver-vm runner --state-dir DIR` entry point: it boots
// the sandbox VM described in DIR and serves it until the VM is gone. args exclude the
// "runner" word.
func RunnerMain(ctx context.Context, args []string, stderr io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("runner", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("state-dir", "", "sandbox state directory (written by the driver)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return fmt.Errorf("runner: --state-dir is required")
	}
	return runner.Run(ctx, *dir, runner.Options{
		NewMachine: newQEMUMachine,
		Ports:      runner.Ports{Gateway: channel.PortGateway, Bootstrap: channel.PortBootstrap, Egress: channel.PortEgress},
		Log:        log,
		Hold: func(spec *runner.Spec) (func(), error) {
			if spec.ImageCacheDir == "" || spec.ImageKey == "" {
				return func() {}, nil
			}
			c, err := images.NewCache(spec.ImageCacheDir)
			if err != nil {
				return nil, err
			}
			return c.Acquire(spec.ImageKey)
		},
	})
}

// qemuMachine adapts vmm.Machine to runner.Machine.
type qemuMachine struct{ vmm.Machine }

func (m qemuMachine) Listen(port uint32) (net.Listener, error) {
	h := m.Host()
	if h == nil {
		return nil, fmt.Errorf("vm channel: host end not ready (machine not started)")
	}
	return h.Listen(port)
}

func (m qemuMachine) Close() error { return nil }

func newQEMUMachine(_ context.Context, spec *runner.Spec, paths state.Paths, log *slog.Logger) (runner.Machine, error) {
	cfg := vmm.Config{
		Name:      "openshell-" + spec.SandboxID,
		VCPUs:     spec.Machine.VCPUs,
		MemoryMiB: spec.Machine.MemoryMiB,
		Kernel:    spec.Machine.Kernel,
		Initrd:    spec.Machine.Initrd,
		Cmdline:   spec.Machine.Cmdline,
		Disks: []vmm.Disk{
			{Path: spec.Machine.ImageDisk, ReadOnly: true},
			{Path: spec.Machine.Disk},
		},
		Channel:    vmm.ChannelConfig{Transport: spec.Machine.Transport, CID: spec.Machine.CID},
		ConsoleLog: paths.ConsoleLog,
		StateDir:   paths.VMMDir,
		Accel:      spec.Machine.Accel,
	}.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m, err := qemu.New(cfg, qemu.WithLogger(log))
	if err != nil {
		return nil, err
	}
	return qemuMachine{m}, nil
}
