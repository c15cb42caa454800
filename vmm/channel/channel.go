// Package channel is the host end of the host↔guest channel. Whatever the transport
// (vhost-vsock, vhost-user hybrid vsock, virtio-serial + stream multiplexer), the
// host sees the same thing: Listen(port) accepts connections the guest dialed to that
// vsock port, Dial(port) connects to a port the guest listens on.
package channel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"

	gchannel "github.com/openshell/openshell/guest/channel"
)

// Transports.
const (
	TransportAuto           = "auto"
	TransportVhostVsock     = "vhost-vsock"
	TransportVhostUserVsock = "vhost-user-vsock"
	TransportVirtioSerial   = "virtio-serial"
)

// The project's port plan (defined once, in guest/channel).
const (
	PortGateway   = gchannel.PortGateway
	PortBootstrap = gchannel.PortBootstrap
	PortEgress    = gchannel.PortEgress
)

// VsockBackendName is the vhost-user vsock backend binary.
const VsockBackendName = "vhost-device-vsock"

// ErrClosed is returned by a closed Host.
var ErrClosed = errors.New("channel: host end closed")

// VMDir is where scripts/setup-vm-host.sh installs the kernel and helper binaries
// ($OPENSHELL_VM_DIR, default /var/lib/openshell/vm).
func VMDir() string {
	if d := os.Getenv("OPENSHELL_VM_DIR"); d != "" {
		return d
	}
	return "/var/lib/openshell/vm"
}

// FindVsockBackend finds vhost-device-vsock on PATH or in <VMDir>/bin.
func FindVsockBackend() (string, error) {
	if p, err := exec.LookPath(VsockBackendName); err == nil {
		return p, nil
	}
	p := filepath.Join(VMDir(), "bin", VsockBackendName)
	if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
		return p, nil
	}
	return "", fmt.Errorf("%s not found on PATH or in %s: run scripts/setup-vm-host.sh", VsockBackendName, filepath.Dir(p))
}

// TransportInfo is the transport DetectTransport picked and why.
type TransportInfo struct {
	Name    string `json:"name"`
	Reason  string `json:"reason"`
	Backend string `json:"backend,omitempty"` // vhost-device-vsock path for vhost-user-vsock
}

// DetectTransport resolves "auto": vhost-vsock when /dev/vhost-vsock exists, else
// vhost-user-vsock when the vhost-device-vsock backend is installed, else
// virtio-serial (always available with QEMU).
func DetectTransport() TransportInfo {
	if _, err := os.Stat("/dev/vhost-vsock"); err == nil {
		return TransportInfo{Name: TransportVhostVsock, Reason: "/dev/vhost-vsock exists"}
	}
	if p, err := FindVsockBackend(); err == nil {
		return TransportInfo{Name: TransportVhostUserVsock, Reason: "no /dev/vhost-vsock; vsock backend " + p + " found", Backend: p}
	}
	return TransportInfo{Name: TransportVirtioSerial, Reason: "no /dev/vhost-vsock and no " + VsockBackendName + " (run scripts/setup-vm-host.sh for vsock); using virtio-serial with a stream multiplexer"}
}

// Host is the host end of one guest's channel. It is safe for concurrent use.
type Host struct {
	transport string
	t         transport
}

type transport interface {
	listen(port uint32) (net.Listener, error)
	dial(ctx context.Context, port uint32) (net.Conn, error)
	close() error
}

// Transport names the transport in use.
func (h *Host) Transport() string { return h.transport }

// Listen accepts guest-initiated connections to vsock port.
func (h *Host) Listen(port uint32) (net.Listener, error) {
	ln, err := h.t.listen(port)
	if err != nil {
		return nil, fmt.Errorf("channel %s: listen on port %d: %w", h.transport, port, err)
	}
	return ln, nil
}

// Dial connects to a port the guest listens on.
func (h *Host) Dial(ctx context.Context, port uint32) (net.Conn, error) {
	c, err := h.t.dial(ctx, port)
	if err != nil {
		return nil, fmt.Errorf("channel %s: dial guest port %d: %w", h.transport, port, err)
	}
	return c, nil
}

// Close releases the host end (listeners stay owned by their callers).
func (h *Host) Close() error { return h.t.close() }

// Accept waits for one guest connection on ln, or for ctx. It closes nothing.
func Accept(ctx context.Context, ln net.Listener) (net.Conn, error) {
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	select {
	case r := <-ch:
		return r.c, r.err
	case <-ctx.Done():
		// Unblock Accept by closing; the caller asked to give up on this listener.
		_ = ln.Close()
		if r := <-ch; r.c != nil {
			_ = r.c.Close()
		}
		return nil, ctx.Err()
	}
}
