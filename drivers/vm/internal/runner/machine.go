package runner

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"

	"github.com/openshell/openshell/drivers/vm/internal/state"
	"github.com/openshell/openshell/vmm"
	"github.com/openshell/openshell/vmm/backends"
	"github.com/openshell/openshell/vmm/libkrun"
	"github.com/openshell/openshell/vmm/qemu"
	"github.com/openshell/openshell/vmm/vz"
)

// LibkrunEnterFlag is the runner flag that makes the process a libkrun enter process
// (`openshell-driver-vm runner --libkrun-enter SPEC`).
const LibkrunEnterFlag = "libkrun-enter"

// vmmMachine adapts vmm.Machine to Machine.
type vmmMachine struct{ vmm.Machine }

func (m vmmMachine) Listen(port uint32) (net.Listener, error) {
	h := m.Host()
	if h == nil {
		return nil, fmt.Errorf("vm channel: host end not ready (machine not started)")
	}
	return h.Listen(port)
}

func (m vmmMachine) Close() error { return nil }

// MachineConfig is the backend-neutral machine of a spec.
func MachineConfig(spec *Spec, paths state.Paths) vmm.Config {
	return vmm.Config{
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
		PCIDevices:  spec.Machine.PCIDevices,
		Channel:     vmm.ChannelConfig{CID: spec.Machine.CID},
		ConsoleLog:  paths.ConsoleLog,
		StateDir:    paths.VMMDir,
		RestoreFrom: spec.Machine.RestoreFrom,
	}.WithDefaults()
}

// NewVMMMachine builds the spec's machine on the backend its `backend` setting
// resolves to here (auto: vz on macOS, libkrun with its library and hardware KVM,
// else QEMU), logging the choice and why.
func NewVMMMachine(_ context.Context, spec *Spec, paths state.Paths, log *slog.Logger) (Machine, error) {
	cfg := MachineConfig(spec, paths)
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	choice, err := backends.Choose(spec.Machine.Backend)
	if err != nil {
		return nil, err
	}
	log.Info("vm backend", "backend", choice.Name, "reason", choice.Reason)
	var m vmm.Machine
	switch choice.Name {
	case backends.Libkrun:
		exe, xerr := os.Executable()
		if xerr != nil {
			return nil, fmt.Errorf("libkrun enter command: %w", xerr)
		}
		m, err = libkrun.New(cfg, libkrun.WithLogger(log), libkrun.WithEnterCommand(exe, "runner", "--"+LibkrunEnterFlag))
	case backends.VZ:
		m, err = vz.New(cfg, vz.WithLogger(log))
	default:
		cfg.MemoryFile = guestRAMFile(spec, paths)
		m, err = qemu.New(cfg, qemu.WithLogger(log), qemu.WithAccel(spec.Machine.Accel), qemu.WithTransport(spec.Machine.Transport), qemu.WithCPU(spec.Machine.CPU))
	}
	if err != nil {
		return nil, err
	}
	return vmmMachine{m}, nil
}
