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

// Transport names: the host ends this package implements.
const (
	TransportVhostVsock     = "vhost-vsock"      // kernel AF_VSOCK (/dev/vhost-vsock)
	TransportVhostUserVsock = "vhost-user-vsock" // hybrid vsock: Unix sockets <uds>_<port>
	TransportVirtioSerial   = "virtio-serial"    // one serial port carrying a stream multiplexer
	TransportUnixPorts      = "unix-ports"       // one host Unix socket per guest port
)

// The project's port plan (defined once, in guest/channel).
const (
	PortGateway   = gchannel.PortGateway
	PortBootstrap = gchannel.PortBootstrap
	PortEgress    = gchannel.PortEgress
	PortBulk      = gchannel.PortBulk
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

// Transport is what a backend supplies for its host end of the channel: accept the
// guest's connections to a vsock port, connect to a port the guest listens on, and
// release what it holds. Implementations need not wrap errors with the port: Host does.
type Transport interface {
	Listen(port uint32) (net.Listener, error)
	Dial(ctx context.Context, port uint32) (net.Conn, error)
	Close() error
}

// ErrNoHostDial is returned by a transport over which the host cannot connect to the
// guest (only guest-initiated connections).
var ErrNoHostDial = errors.New("this transport carries only guest-initiated connections")

// Host is the host end of one guest's channel, over any Transport. It is safe for
// concurrent use when its transport is.
type Host struct {
	name string
	t    Transport
}

// New wraps a backend's transport, named for errors and diagnostics.
func New(name string, t Transport) *Host { return &Host{name: name, t: t} }

// Transport names the transport in use.
func (h *Host) Transport() string { return h.name }

// Listen accepts guest-initiated connections to vsock port.
func (h *Host) Listen(port uint32) (net.Listener, error) {
	ln, err := h.t.Listen(port)
	if err != nil {
		return nil, fmt.Errorf("channel %s: listen on port %d: %w", h.name, port, err)
	}
	return ln, nil
}

// Dial connects to a port the guest listens on.
func (h *Host) Dial(ctx context.Context, port uint32) (net.Conn, error) {
	c, err := h.t.Dial(ctx, port)
	if err != nil {
		return nil, fmt.Errorf("channel %s: dial guest port %d: %w", h.name, port, err)
	}
	return c, nil
}

// Detacher is a Transport that can let go of the guest for a while (virtio-serial).
type Detacher interface {
	Detach()
	Attach()
}

// Detach drops the host's connection to the guest until Attach, when the transport
// can (reports whether it did): a VM about to be saved must not carry a live session.
func (h *Host) Detach() bool {
	d, ok := h.t.(Detacher)
	if ok {
		d.Detach()
	}
	return ok
}

// Attach undoes Detach.
func (h *Host) Attach() {
	if d, ok := h.t.(Detacher); ok {
		d.Attach()
	}
}

// Close releases the host end (listeners stay owned by their callers).
func (h *Host) Close() error { return h.t.Close() }

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
