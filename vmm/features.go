package vmm

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
	// Snapshots: the machine can be saved and restored.
	Snapshots bool `json:"snapshots"`
	// ChildProcess: the VMM is a process of its own whose PID (with its start time)
	// identifies the machine, so a restarted runner can re-adopt it by PID. False
	// means the VMM lives inside the caller's process.
	ChildProcess bool `json:"child_process"`
	// GracefulStop: Stop asks the guest to power off before ending the VMM.
	GracefulStop bool `json:"graceful_stop"`
}
