package vz

import (
	"log/slog"

	"github.com/openshell/openshell/vmm"
)

// Option configures New.
type Option func(*options)

type options struct {
	log *slog.Logger
}

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// Features of the Virtualization.framework backend: the VM runs inside the calling
// process (the runner), its channel is the framework's virtio socket device, and
// Stop asks the guest to power off through the framework.
func Features() vmm.Features {
	return vmm.Features{
		Backend:      "vz",
		Transports:   []string{TransportVirtioSocket},
		HostDial:     true,
		SharedDirs:   true,
		GracefulStop: true,
		// Not offered here: the framework's save/restore (macOS 14+) is not wired up,
		// so suspend and snapshots are refused.
		Snapshots: false,
	}
}

// TransportVirtioSocket names the host end over the framework's virtio socket device.
const TransportVirtioSocket = "vz-virtio-socket"
