// Package runner is the per-VM process of the VM driver: a re-exec of the driver binary
// (`openshell-driver-vm runner --state-dir DIR`) in its own session, so that it outlives
// the driver and the gateway. It owns the VMM, the guest channel listeners and the
// sandbox state directory; it serves a small control API on DIR/ctl.sock and leaves a
// tombstone when the VM is gone. On the channel ports it serves the bootstrap config
// once per boot and admits only the guest's supervisor, within per-VM stream limits
// (guard.go).
package runner

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/vm/internal/state"
	"github.com/openshell/openshell/internal/atomicfile"
	"github.com/openshell/openshell/supervisor/bootstrap"
	"github.com/openshell/openshell/vmm/backends"
)

// Spec is runner.json: everything the runner needs to boot the VM. The driver writes it
// (0600: it carries the sandbox token) before each start.
type Spec struct {
	SandboxID   string      `json:"sandbox_id"`
	SandboxName string      `json:"sandbox_name"`
	Machine     MachineSpec `json:"machine"`
	// GatewaySocketDir is the host directory holding the gateway's per-sandbox socket
	// (drivers.GatewaySocketName): a plaintext gRPC socket the gateway binds to this
	// sandbox. When set, guest connections on the gateway port are bridged to it and
	// the guest speaks plaintext gRPC (the runner knows its VM, the socket tells the
	// gateway which sandbox; the token is still checked).
	GatewaySocketDir string `json:"gateway_socket_dir,omitempty"`
	// GatewayAddr is the gateway's TCP address. Without a socket dir (runners booted
	// before the gateway made one) guest connections are bridged there byte for byte
	// and TLS runs end to end from the guest.
	GatewayAddr string `json:"gateway_addr"`
	// Bootstrap is served as one JSON document on the bootstrap port.
	Bootstrap bootstrap.Config `json:"bootstrap"`
	// Egress is the host-side check on the guest's egress connections.
	Egress EgressPolicy `json:"egress"`
	// Limits bound the streams one guest may hold open through the runner.
	Limits Limits `json:"limits,omitzero"`
	// StopTimeout bounds a graceful guest shutdown before the VM is killed.
	StopTimeout Duration `json:"stop_timeout"`
	// ImageCacheDir/ImageKey name the cached image disk the VM reads; the runner holds
	// it (images.Cache.Acquire) while the VM runs so it is not collected.
	ImageCacheDir string `json:"image_cache_dir,omitempty"`
	ImageKey      string `json:"image_key,omitempty"`
	// Pool names the warm pool this VM was booted for: its runner boots it with no
	// sandbox identity (SandboxID is the pool member's, Bootstrap is empty) and holds
	// the guest's bootstrap fetch until a Claim hands it one (claim.go).
	Pool string `json:"pool,omitempty"`
}

// MachineSpec is the VM itself.
type MachineSpec struct {
	VCPUs     int    `json:"vcpus"`
	MemoryMiB int    `json:"memory_mib"`
	Kernel    string `json:"kernel"`
	Initrd    string `json:"initrd"`
	Cmdline   string `json:"cmdline,omitempty"`
	ImageDisk string `json:"image_disk"` // read-only root image (vda)
	Disk      string `json:"disk"`       // writable disk (vdb)
	// Backend is the VMM backend: auto (default), qemu, libkrun or vz.
	Backend   string `json:"backend,omitempty"`
	Accel     string `json:"accel"`     // qemu only: auto, kvm, tcg
	Transport string `json:"transport"` // qemu only: auto, vhost-vsock, vhost-user-vsock, virtio-serial
	// CID is the guest's vsock context id, unique among the driver's VMs (it must be
	// unique on the host with vhost-vsock; the per-VM backends ignore clashes).
	CID uint32 `json:"cid,omitempty"`
	// PCIDevices are host functions on vfio-pci the VM gets (GPUs; qemu only).
	PCIDevices []string `json:"pci_devices,omitempty"`
	// RestoreFrom is set by a runner resuming a suspended VM (never by the driver): the
	// saved state to start from.
	RestoreFrom string `json:"restore_from,omitempty"`
	// CPU is the guest CPU model the VMM gave the machine, recorded with its saved
	// state so that a restore gets the same; empty on a fresh boot (the backend's
	// default).
	CPU string `json:"cpu,omitempty"`
}

// Limits bound the streams one guest may hold open through the runner at once; a
// connection beyond a limit is closed at once (logged, counted in the status). Zero
// means the default.
type Limits struct {
	// GatewayStreams caps the guest's connections on the gateway port (the
	// supervisor's session needs one; reconnects briefly overlap). Default 64.
	GatewayStreams int `json:"gateway_streams,omitempty"`
	// EgressStreams caps the guest's open egress tunnels and lookups (one per
	// upstream connection of the sandbox). Default 256.
	EgressStreams int `json:"egress_streams,omitempty"`
}

// Default limits.
const (
	DefaultGatewayStreams = 64
	DefaultEgressStreams  = 256
)

// WithDefaults fills the zero fields.
func (l Limits) WithDefaults() Limits {
	if l.GatewayStreams == 0 {
		l.GatewayStreams = DefaultGatewayStreams
	}
	if l.EgressStreams == 0 {
		l.EgressStreams = DefaultEgressStreams
	}
	return l
}

// Validate names a bad field.
func (l Limits) Validate() error {
	switch {
	case l.GatewayStreams < 0:
		return fmt.Errorf("runner spec: limits.gateway_streams %d: must be positive (or 0 for the default %d)", l.GatewayStreams, DefaultGatewayStreams)
	case l.EgressStreams < 0:
		return fmt.Errorf("runner spec: limits.egress_streams %d: must be positive (or 0 for the default %d)", l.EgressStreams, DefaultEgressStreams)
	}
	return nil
}

// Duration is a time.Duration that marshals as a Go duration string.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Validate names the first bad field.
func (s *Spec) Validate() error {
	switch {
	case state.ValidID(s.SandboxID) != nil:
		return fmt.Errorf("runner spec: sandbox_id: %w", state.ValidID(s.SandboxID))
	case s.Machine.VCPUs < 1:
		return fmt.Errorf("runner spec: machine.vcpus %d: must be at least 1", s.Machine.VCPUs)
	case s.Machine.MemoryMiB < 64:
		return fmt.Errorf("runner spec: machine.memory_mib %d: must be at least 64", s.Machine.MemoryMiB)
	case s.Machine.Kernel == "":
		return fmt.Errorf("runner spec: machine.kernel is empty")
	case s.Machine.Initrd == "":
		return fmt.Errorf("runner spec: machine.initrd is empty")
	case s.Machine.ImageDisk == "":
		return fmt.Errorf("runner spec: machine.image_disk is empty")
	case s.Machine.Disk == "":
		return fmt.Errorf("runner spec: machine.disk is empty")
	case s.GatewayAddr == "" && s.GatewaySocketDir == "":
		return fmt.Errorf("runner spec: gateway_addr and gateway_socket_dir are both empty: the guest's sessions have nowhere to go")
	case s.GatewaySocketDir != "" && !filepath.IsAbs(s.GatewaySocketDir):
		return fmt.Errorf("runner spec: gateway_socket_dir %q must be an absolute path", s.GatewaySocketDir)
	case s.Machine.Backend != "" && backends.Validate(s.Machine.Backend) != nil:
		return fmt.Errorf("runner spec: machine.%w", backends.Validate(s.Machine.Backend))
	}
	if err := s.Limits.Validate(); err != nil {
		return err
	}
	return s.Egress.Validate()
}

// GatewaySocket is the path of the gateway's per-sandbox socket ("" = none: bridge
// to GatewayAddr over TCP).
func (s *Spec) GatewaySocket() string {
	if s.GatewaySocketDir == "" {
		return ""
	}
	return filepath.Join(s.GatewaySocketDir, drivers.GatewaySocketName)
}

// WriteSpec stores spec in dir/runner.json (0600).
func WriteSpec(dir string, s *Spec) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode runner spec: %w", err)
	}
	return atomicfile.WriteFile(filepath.Join(dir, state.SpecFile), b, 0o600)
}

// ReadSpec loads and validates dir/runner.json.
func ReadSpec(dir string) (*Spec, error) {
	b, err := os.ReadFile(filepath.Join(dir, state.SpecFile))
	if err != nil {
		return nil, fmt.Errorf("read runner spec: %w", err)
	}
	var s Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("runner spec %s: %w", dir, err)
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return &s, nil
}
