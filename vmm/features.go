package vmm

import (
	"context"
	"errors"
)

// Features is what one backend can do, so callers ask instead of switching on the
// backend's type.
type Features struct {
	// Backend is the backend's name, as vmm/backends registers it.
	Backend string `json:"backend"`
	// Transports are the host ends of the vsock channel the backend can supply
	// (names from vmm/channel).
	Transports []string `json:"transports"`
	// HostDial: the host can connect to ports the guest listens on (not only accept
	// the guest's connections).
	HostDial bool `json:"host_dial"`
	// SharedDirs: host directories over virtiofs.
	SharedDirs bool `json:"shared_dirs"`
	// DevicePassthrough: host PCI devices (Config.PCIDevices).
	DevicePassthrough bool `json:"device_passthrough"`
	// Snapshots: the machine can be saved and restored (Saver, Config.RestoreFrom).
	// False for backends that cannot (libkrun, vz): callers refuse suspend and
	// snapshot for them instead of trying.
	Snapshots bool `json:"snapshots"`
	// SnapshotTransports are the channel transports a saved machine may use; empty =
	// all of Transports (a vhost-user vsock device, for one, may not be migratable).
	SnapshotTransports []string `json:"snapshot_transports,omitempty"`
	// ChildProcess: the VMM is a process of its own whose PID (with its start time)
	// identifies the machine, so a restarted runner can re-adopt it by PID. False
	// means the VMM lives inside the caller's process.
	ChildProcess bool `json:"child_process"`
	// GracefulStop: Stop asks the guest to power off before ending the VMM.
	GracefulStop bool `json:"graceful_stop"`
}

// ErrCannotSave is returned by Saver.Save when this machine's device set cannot be
// migrated (wrapped with the device and the fix).
var ErrCannotSave = errors.New("vmm: machine cannot be saved")

// Saver is implemented by machines of backends whose Features.Snapshots is set. A
// saved state is restored by a new machine whose Config.RestoreFrom names it and whose
// Config is otherwise the same (disk paths may differ, their contents must match).
type Saver interface {
	// Save pauses the guest, flushes its disks and writes its memory and device state
	// to path; the guest stays paused (Resume continues it, Kill ends it).
	Save(ctx context.Context, path string) error
	// Resume continues a paused guest: after Save, or after a restore (a restored
	// machine starts paused so the caller can act before the guest runs again).
	Resume(ctx context.Context) error
}
