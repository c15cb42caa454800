// Package vmm is the hypervisor abstraction: what a microVM is made of (Config) and how
// it is driven (Machine). Backends live in subpackages (qemu, libkrun, vz); the host end
// of the host↔guest channel lives in vmm/channel. Nothing here knows what a sandbox is.
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

// Channel transports.
const (
	TransportAuto           = channel.TransportAuto
	TransportVhostVsock     = channel.TransportVhostVsock
	TransportVhostUserVsock = channel.TransportVhostUserVsock
	TransportVirtioSerial   = channel.TransportVirtioSerial
)

// ChannelConfig selects the host↔guest transport.
type ChannelConfig struct {
	// Transport: "auto" (default), "vhost-vsock", "vhost-user-vsock" or "virtio-serial".
	Transport string `json:"transport,omitempty"`
	// CID is the guest's vsock context id (>= 3). 0 = 3, which is fine for the
	// per-VM vhost-user backend; vhost-vsock needs a CID unique on the host.
	CID uint32 `json:"cid,omitempty"`
}

// Accelerators.
const (
	AccelAuto = "auto"
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// Config describes one microVM.
type Config struct {
	Name       string      `json:"name"`
	VCPUs      int         `json:"vcpus,omitempty"`
	MemoryMiB  int         `json:"memory_mib,omitempty"`
	Kernel     string      `json:"kernel"`
	Initrd     string      `json:"initrd,omitempty"`
	Cmdline    string      `json:"cmdline,omitempty"` // extra args appended to the backend's own
	Disks      []Disk      `json:"disks,omitempty"`
	SharedDirs []SharedDir `json:"shared_dirs,omitempty"`
	// PCIDevices are host PCI addresses (e.g. 0000:01:00.0) passed through with VFIO;
	// any forces the q35 machine type.
	PCIDevices []string      `json:"pci_devices,omitempty"`
	Channel    ChannelConfig `json:"channel"`
	ConsoleLog string        `json:"console_log,omitempty"` // default <StateDir>/console.log
	StateDir   string        `json:"state_dir"`             // sockets, pid files, QMP socket
	Accel      string        `json:"accel,omitempty"`       // "auto" (default), "kvm", "tcg"
}

// Defaults used by WithDefaults.
const (
	DefaultVCPUs     = 1
	DefaultMemoryMiB = 512
	DefaultCID       = 3
)

// WithDefaults returns a copy of c with empty fields filled.
func (c Config) WithDefaults() Config {
	if c.VCPUs == 0 {
		c.VCPUs = DefaultVCPUs
	}
	if c.MemoryMiB == 0 {
		c.MemoryMiB = DefaultMemoryMiB
	}
	if c.Channel.Transport == "" {
		c.Channel.Transport = TransportAuto
	}
	if c.Channel.CID == 0 {
		c.Channel.CID = DefaultCID
	}
	if c.Accel == "" {
		c.Accel = AccelAuto
	}
	if c.ConsoleLog == "" && c.StateDir != "" {
		c.ConsoleLog = filepath.Join(c.StateDir, "console.log")
	}
	return c
}

// maxSocketPath is the longest path a Unix socket may have (sun_path), leaving room
// for the "_<port>" suffix of hybrid vsock sockets.
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
	switch c.Channel.Transport {
	case "", TransportAuto, TransportVhostVsock, TransportVhostUserVsock, TransportVirtioSerial:
	default:
		return fmt.Errorf("vmm config %q: Channel.Transport=%q; use auto, vhost-vsock, vhost-user-vsock or virtio-serial", c.Name, c.Channel.Transport)
	}
	switch c.Accel {
	case "", AccelAuto, AccelKVM, AccelTCG:
	default:
		return fmt.Errorf("vmm config %q: Accel=%q; use auto, kvm or tcg", c.Name, c.Accel)
	}
	for i, d := range c.Disks {
		if d.Path == "" {
			return fmt.Errorf("vmm config %q: Disks[%d].Path is empty", c.Name, i)
		}
		if strings.Contains(d.Path, ",") {
			return fmt.Errorf("vmm config %q: Disks[%d].Path %q contains a comma; rename the file", c.Name, i, d.Path)
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
	// Start returns once the VMM process runs (not when the guest has booted).
	Start(ctx context.Context) error
	// Stop asks the guest to power down (ACPI over QMP), then quits/kills the VMM
	// when ctx is done.
	Stop(ctx context.Context) error
	Kill() error
	// Wait blocks until the VMM exits and returns its exit error.
	Wait(ctx context.Context) error
	State() State
	// PID of the VMM process, for re-adoption records.
	PID() int
	// Host is the host end of the guest channel (valid after Start).
	Host() *channel.Host
}
