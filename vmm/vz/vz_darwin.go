//go:build darwin

// Package vz is the macOS Virtualization.framework backend (through
// github.com/Code-Hex/vz/v3): our kernel and initramfs through the Linux boot loader,
// virtio-blk disks, the framework's virtio socket device as the channel, a virtio
// console written to the console log, a memory balloon, and stop through the guest.
// The VM lives in the calling process (the runner), which must be signed with the
// com.apple.security.virtualization entitlement (see the README).
package vz

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	vzlib "github.com/Code-Hex/vz/v3"

	"github.com/openshell/openshell/vmm"
	"github.com/openshell/openshell/vmm/channel"
)

// baseCmdline is always on the kernel command line; cfg.Cmdline is appended.
const baseCmdline = "console=hvc0 panic=-1 quiet"

// Machine is one Virtualization.framework VM.
type Machine struct {
	cfg  vmm.Config
	opts options
	log  *slog.Logger

	mu       sync.Mutex
	state    vmm.State
	vm       *vzlib.VirtualMachine
	host     *channel.Host
	exited   chan struct{}
	exitErr  error
	stopping bool
}

var _ vmm.Machine = (*Machine)(nil)

// New validates cfg and returns an unstarted machine.
func New(cfg vmm.Config, opts ...Option) (vmm.Machine, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if o.log == nil {
		o.log = slog.Default()
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.CheckFeatures(Features()); err != nil {
		return nil, err
	}
	return &Machine{cfg: cfg, opts: o, log: o.log.With("vm", cfg.Name, "vmm", "vz"), state: vmm.StateCreated, exited: make(chan struct{})}, nil
}

// Available reports whether this Mac can run VMs: the framework must allow at least
// one vCPU (it reports zero where virtualisation is unavailable).
func Available() error {
	if vzlib.VirtualMachineConfigurationMaximumAllowedCPUCount() < 1 {
		return errors.New("vz: Virtualization.framework reports no usable vCPUs (a VM without nested virtualisation?)")
	}
	return nil
}

func (m *Machine) configuration() (*vzlib.VirtualMachineConfiguration, error) {
	cfg := m.cfg
	cmdline := strings.TrimSpace(baseCmdline + " " + cfg.Cmdline)
	bootOpts := []vzlib.LinuxBootLoaderOption{vzlib.WithCommandLine(cmdline)}
	if cfg.Initrd != "" {
		bootOpts = append(bootOpts, vzlib.WithInitrd(cfg.Initrd))
	}
	boot, err := vzlib.NewLinuxBootLoader(cfg.Kernel, bootOpts...)
	if err != nil {
		return nil, fmt.Errorf("boot loader (kernel %s): %w", cfg.Kernel, err)
	}
	vc, err := vzlib.NewVirtualMachineConfiguration(boot, uint(cfg.VCPUs), uint64(cfg.MemoryMiB)<<20)
	if err != nil {
		return nil, err
	}
	console, err := vzlib.NewFileSerialPortAttachment(cfg.ConsoleLog, false)
	if err != nil {
		return nil, fmt.Errorf("console %s: %w", cfg.ConsoleLog, err)
	}
	serial, err := vzlib.NewVirtioConsoleDeviceSerialPortConfiguration(console)
	if err != nil {
		return nil, err
	}
	vc.SetSerialPortsVirtualMachineConfiguration([]*vzlib.VirtioConsoleDeviceSerialPortConfiguration{serial})

	var disks []vzlib.StorageDeviceConfiguration
	for i, d := range cfg.Disks {
		att, err := vzlib.NewDiskImageStorageDeviceAttachment(d.Path, d.ReadOnly)
		if err != nil {
			return nil, fmt.Errorf("Disks[%d] %s: %w", i, d.Path, err)
		}
		blk, err := vzlib.NewVirtioBlockDeviceConfiguration(att)
		if err != nil {
			return nil, err
		}
		disks = append(disks, blk)
	}
	vc.SetStorageDevicesVirtualMachineConfiguration(disks)

	var shares []vzlib.DirectorySharingDeviceConfiguration
	for i, s := range cfg.SharedDirs {
		dev, err := vzlib.NewVirtioFileSystemDeviceConfiguration(s.Tag)
		if err != nil {
			return nil, fmt.Errorf("SharedDirs[%d]: %w", i, err)
		}
		dir, err := vzlib.NewSharedDirectory(s.Path, false)
		if err != nil {
			return nil, fmt.Errorf("SharedDirs[%d] %s: %w", i, s.Path, err)
		}
		share, err := vzlib.NewSingleDirectoryShare(dir)
		if err != nil {
			return nil, err
		}
		dev.SetDirectoryShare(share)
		shares = append(shares, dev)
	}
	vc.SetDirectorySharingDevicesVirtualMachineConfiguration(shares)

	sock, err := vzlib.NewVirtioSocketDeviceConfiguration()
	if err != nil {
		return nil, err
	}
	vc.SetSocketDevicesVirtualMachineConfiguration([]vzlib.SocketDeviceConfiguration{sock})
	balloon, err := vzlib.NewVirtioTraditionalMemoryBalloonDeviceConfiguration()
	if err != nil {
		return nil, err
	}
	vc.SetMemoryBalloonDevicesVirtualMachineConfiguration([]vzlib.MemoryBalloonDeviceConfiguration{balloon})
	entropy, err := vzlib.NewVirtioEntropyDeviceConfiguration()
	if err != nil {
		return nil, err
	}
	vc.SetEntropyDevicesVirtualMachineConfiguration([]*vzlib.VirtioEntropyDeviceConfiguration{entropy})
	if ok, err := vc.Validate(); !ok || err != nil {
		return nil, fmt.Errorf("configuration refused by Virtualization.framework: %v", err)
	}
	return vc, nil
}

// Start builds the VM and starts it; it returns once the framework runs it.
func (m *Machine) Start(ctx context.Context) (retErr error) {
	m.mu.Lock()
	if m.state != vmm.StateCreated {
		st := m.state
		m.mu.Unlock()
		return fmt.Errorf("vm %s: Start in state %s: a machine starts once; create a new one", m.cfg.Name, st)
	}
	m.state = vmm.StateRunning
	m.mu.Unlock()
	defer func() {
		if retErr != nil {
			m.mu.Lock()
			m.state, m.exitErr = vmm.StateCrashed, retErr
			m.mu.Unlock()
			close(m.exited)
		}
	}()
	if err := os.MkdirAll(m.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("vm %s: state dir: %w", m.cfg.Name, err)
	}
	vc, err := m.configuration()
	if err != nil {
		return fmt.Errorf("vm %s: %w", m.cfg.Name, err)
	}
	vm, err := vzlib.NewVirtualMachine(vc)
	if err != nil {
		return fmt.Errorf("vm %s: %w (is the binary signed with the com.apple.security.virtualization entitlement?)", m.cfg.Name, err)
	}
	devs := vm.SocketDevices()
	if len(devs) == 0 {
		return fmt.Errorf("vm %s: the VM has no virtio socket device", m.cfg.Name)
	}
	m.mu.Lock()
	m.vm = vm
	m.host = channel.New(TransportVirtioSocket, &socketHost{dev: devs[0]})
	m.mu.Unlock()
	if err := vm.Start(); err != nil {
		return fmt.Errorf("vm %s: start: %w", m.cfg.Name, err)
	}
	go m.watch(vm)
	m.log.Info("vm started", "vcpus", m.cfg.VCPUs, "memory_mib", m.cfg.MemoryMiB)
	return ctx.Err()
}

// watch turns the framework's state changes into the machine's exit.
func (m *Machine) watch(vm *vzlib.VirtualMachine) {
	for st := range vm.StateChangedNotify() {
		if st != vzlib.VirtualMachineStateStopped && st != vzlib.VirtualMachineStateError {
			continue
		}
		m.mu.Lock()
		switch {
		case st == vzlib.VirtualMachineStateError && !m.stopping:
			m.state, m.exitErr = vmm.StateCrashed, errors.New("vz: Virtualization.framework reported an internal VM error")
		default:
			m.state = vmm.StateStopped
		}
		m.mu.Unlock()
		close(m.exited)
		return
	}
}

// Stop asks the guest to power off, waits until ctx is done (10s without a
// deadline), then stops the VM.
func (m *Machine) Stop(ctx context.Context) error {
	m.mu.Lock()
	vm := m.vm
	m.stopping = true
	m.mu.Unlock()
	if vm == nil {
		return nil
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	if vm.CanRequestStop() {
		if _, err := vm.RequestStop(); err != nil {
			m.log.Debug("request stop", "err", err)
		}
	}
	select {
	case <-m.exited:
		return nil
	case <-ctx.Done():
	}
	return m.Kill()
}

// Kill stops the VM at once.
func (m *Machine) Kill() error {
	m.mu.Lock()
	vm := m.vm
	m.stopping = true
	m.mu.Unlock()
	if vm == nil || !vm.CanStop() {
		return nil
	}
	if err := vm.Stop(); err != nil {
		return fmt.Errorf("vm %s: stop: %w", m.cfg.Name, err)
	}
	return nil
}

// Wait blocks until the VM has stopped.
func (m *Machine) Wait(ctx context.Context) error {
	select {
	case <-m.exited:
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.state == vmm.StateCrashed {
			return fmt.Errorf("vm %s: %w", m.cfg.Name, m.exitErr)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// State of the machine.
func (m *Machine) State() vmm.State {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state
}

// PID is this process: the VM runs inside it.
func (m *Machine) PID() int { return os.Getpid() }

// Host is the host end over the VM's virtio socket device (nil before Start).
func (m *Machine) Host() *channel.Host {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.host
}

// socketHost is the channel transport over VZVirtioSocketDevice.
type socketHost struct{ dev *vzlib.VirtioSocketDevice }

var _ channel.Transport = (*socketHost)(nil)

func (s *socketHost) Listen(port uint32) (net.Listener, error) { return s.dev.Listen(port) }

func (s *socketHost) Dial(ctx context.Context, port uint32) (net.Conn, error) {
	type res struct {
		c   *vzlib.VirtioSocketConnection
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := s.dev.Connect(port)
		ch <- res{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, r.err
		}
		return r.c, nil
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.c != nil {
				_ = r.c.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

func (s *socketHost) Close() error { return nil }
