// Package vmm is the hypervisor abstraction: what a microVM is made of (Config), what
// a backend can do (Features) and how a machine is driven (Machine). It imports no
// backend: backends live in subpackages and are chosen by vmm/backends; the host end of the host↔guest channel lives in vmm/channel. Nothing
// here knows what a sandbox is, and nothing here speaks one hypervisor's dialect:
// machine types, accelerators, transport choices and command-line escaping are the
// backends' own options.
package vmm

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/openshell/openshell/vmm/channel"
)

// ErrNotSupported is returned by backends that cannot run on this platform or build.
var ErrNotSupported = errors.New("vmm: backend not supported on this platform")

// Disk is a virtio-blk disk; disks are attached in order as vda, vdb, ...
type Disk struct {
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// SharedDir is a host directory exported to the guest over virtiofs under Tag.
type SharedDir struct {
	Tag  string `json:"tag"`
	Path string `json:"path"`
}

// ChannelConfig is the guest's side of the host↔guest vsock channel.
type ChannelConfig struct {
	// CID is the guest's vsock context id (>= 3). 0 = 3; a backend whose host end is
	// shared by every guest on the host needs it unique.
	CID uint32 `json:"cid,omitempty"`
	// Ports are the vsock ports the guest dials on the host. Backends that route
	// ports to host sockets ahead of boot need them; empty = the project's port plan.
	Ports []uint32 `json:"ports,omitempty"`
}

// Config describes one microVM, whatever the backend.
type Config struct {
	Name      string `json:"name"`
	VCPUs     int    `json:"vcpus,omitempty"`
	MemoryMiB int    `json:"memory_mib,omitempty"`
	// Kernel is the guest kernel; an x86_64 ELF vmlinux or an arm64 Image (the
	// bundle's format for the host's architecture).
	Kernel     string      `json:"kernel"`
	Initrd     string      `json:"initrd,omitempty"`
	Cmdline    string      `json:"cmdline,omitempty"` // extra args appended to the backend's own
	Disks      []Disk      `json:"disks,omitempty"`
	SharedDirs []SharedDir `json:"shared_dirs,omitempty"`
	// PCIDevices are host devices (PCI addresses, e.g. 0000:01:00.0) passed through to
	// the guest; only backends whose Features.DevicePassthrough is set accept them.
	PCIDevices []string      `json:"pci_devices,omitempty"`
	Channel    ChannelConfig `json:"channel"`
	ConsoleLog string        `json:"console_log,omitempty"` // default <StateDir>/console.log
	StateDir   string        `json:"state_dir"`             // the backend's sockets and pid files
	// RestoreFrom is a state file a Saver wrote: the machine starts from it, paused,
	// instead of booting (backends whose Features.Snapshots is set).
	RestoreFrom string `json:"restore_from,omitempty"`
	// MemoryFile backs guest RAM with this file (shared, sparse) instead of anonymous
	// memory. A Saver then leaves RAM in the file and saves only the device state, and
	// a restore maps the same file: far less to write and read. The file belongs with
	// the saved state (a cold start clears it).
	MemoryFile string `json:"memory_file,omitempty"`
}

// Defaults used by WithDefaults.
const (
	DefaultVCPUs     = 1
	DefaultMemoryMiB = 512
	DefaultCID       = 3
)

// DefaultPorts is the project's port plan: what the guest dials on the host.
var DefaultPorts = []uint32{channel.PortGateway, channel.PortBootstrap, channel.PortEgress, channel.PortBulk}

// WithDefaults returns a copy of c with empty fields filled.
func (c Config) WithDefaults() Config {
	if c.VCPUs == 0 {
		c.VCPUs = DefaultVCPUs
	}
	if c.MemoryMiB == 0 {
		c.MemoryMiB = DefaultMemoryMiB
	}
	if c.Channel.CID == 0 {
		c.Channel.CID = DefaultCID
	}
	if len(c.Channel.Ports) == 0 {
		c.Channel.Ports = append([]uint32(nil), DefaultPorts...)
	}
	if c.ConsoleLog == "" && c.StateDir != "" {
		c.ConsoleLog = filepath.Join(c.StateDir, "console.log")
	}
	return c
}

// maxSocketPath is the longest state dir whose sockets fit in sun_path (107 bytes),
// leaving room for the "_<port>" suffix of per-port sockets.
const maxSocketPath = 107 - len("_4294967295") - len("/vsock.sock")

// Validate checks c (after WithDefaults) and names the bad field and the fix.
func (c Config) Validate() error {
	switch {
	case c.Name == "":
		return errors.New("vmm config: Name is empty; give the machine a name")
	case c.VCPUs < 1:
		return fmt.Errorf("vmm config %q: VCPUs=%d; use at least 1", c.Name, c.VCPUs)
	case c.MemoryMiB < 64:
		return fmt.Errorf("vmm config %q: MemoryMiB=%d; use at least 64", c.Name, c.MemoryMiB)
	case c.Kernel == "":
		return fmt.Errorf("vmm config %q: Kernel is empty; set it (see bundle.FindKernel) or run scripts/setup-vm-host.sh", c.Name)
	case c.StateDir == "":
		return fmt.Errorf("vmm config %q: StateDir is empty; give each machine its own directory", c.Name)
	case !filepath.IsAbs(c.StateDir):
		return fmt.Errorf("vmm config %q: StateDir %q is not absolute", c.Name, c.StateDir)
	case len(c.StateDir) > maxSocketPath:
		return fmt.Errorf("vmm config %q: StateDir %q is too long for Unix sockets (max %d bytes); use a shorter path", c.Name, c.StateDir, maxSocketPath)
	case c.Channel.CID != 0 && c.Channel.CID < 3:
		return fmt.Errorf("vmm config %q: Channel.CID=%d; guest CIDs start at 3", c.Name, c.Channel.CID)
	}
	for i, p := range c.Channel.Ports {
		if p == 0 {
			return fmt.Errorf("vmm config %q: Channel.Ports[%d] is 0; use a port number from the port plan", c.Name, i)
		}
	}
	for i, d := range c.Disks {
		if d.Path == "" {
			return fmt.Errorf("vmm config %q: Disks[%d].Path is empty", c.Name, i)
		}
	}
	for i, s := range c.SharedDirs {
		if s.Tag == "" || s.Path == "" {
			return fmt.Errorf("vmm config %q: SharedDirs[%d] needs both Tag and Path", c.Name, i)
		}
	}
	for i, p := range c.PCIDevices {
		if p == "" || strings.ContainsAny(p, ", ") {
			return fmt.Errorf("vmm config %q: PCIDevices[%d]=%q is not a PCI address like 0000:01:00.0", c.Name, i, p)
		}
	}
	return nil
}

// CheckFeatures refuses a config that asks for what f lacks, naming the field and the
// backend that has it.
func (c Config) CheckFeatures(f Features) error {
	if len(c.SharedDirs) > 0 && !f.SharedDirs {
		return fmt.Errorf("vmm config %q: SharedDirs: the %s backend cannot share host directories; drop them or use a backend that can", c.Name, f.Backend)
	}
	if c.RestoreFrom != "" && !f.Snapshots {
		return fmt.Errorf("vmm config %q: RestoreFrom: the %s backend cannot restore a saved machine (Features.Snapshots is false); use a backend that can", c.Name, f.Backend)
	}
	if len(c.PCIDevices) > 0 && !f.DevicePassthrough {
		return fmt.Errorf("vmm config %q: PCIDevices: the %s backend cannot pass devices through; choose a backend whose Features.DevicePassthrough is set (see openshell doctor)", c.Name, f.Backend)
	}
	return nil
}

// State of a Machine.
type State string

// Machine states.
const (
	StateCreated State = "created"
	StateRunning State = "running"
	StateStopped State = "stopped"
	StateCrashed State = "crashed"
)

// Machine is one microVM driven by a backend.
type Machine interface {
	// Start returns once the VMM runs (not when the guest has booted).
	Start(ctx context.Context) error
	// Stop asks the guest to power down, then ends the VMM when ctx is done.
	Stop(ctx context.Context) error
	Kill() error
	// Wait blocks until the VMM exits and returns its exit error.
	Wait(ctx context.Context) error
	State() State
	// PID of the VMM process, for re-adoption records (this process's own PID for a
	// backend that runs in-process).
	PID() int
	// Host is the host end of the guest channel (valid after Start).
	Host() *channel.Host
}
