// Package channel is the guest end of the host↔guest channel and the project's one
// port plan. The guest dials the host (CID 2) on a vsock port; when the VM has no
// vsock device, the same ports are carried over the virtio-serial port
// "openshell.0" by a yamux session (see guest/channel/wire).
package channel

// Port plan: vsock ports the guest dials on the host (CID 2).
const (
	PortGateway   uint32 = 1024 // supervisor ↔ gateway session, relayed by the runner
	PortBootstrap uint32 = 1025 // the guest fetches its bootstrap config here
	PortEgress    uint32 = 1026 // egress proxy upstream, policy-checked on the host
	PortBulk      uint32 = 1027 // one relay's bytes (a file transfer), gRPC spoken by the runner
)

// HostCID is the vsock context id of the host.
const HostCID uint32 = 2

// Transports as seen from the guest.
const (
	TransportVsock  = "vsock"
	TransportSerial = "virtio-serial"
)
