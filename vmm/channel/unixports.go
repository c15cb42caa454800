package channel

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
)

// UnixPortPath is the host Unix socket that carries the guest's connections to port:
// prefix_<port>, the same naming as the hybrid vsock backend.
func UnixPortPath(prefix string, port uint32) string { return fmt.Sprintf("%s_%d", prefix, port) }

// NewUnixPorts is the host end for a VMM that maps each guest vsock port, fixed
// before boot, to a host Unix socket it connects to when the guest dials that port
// (UnixPortPath). The host listens there; it cannot dial the guest.
func NewUnixPorts(prefix string) *Host {
	return New(TransportUnixPorts, &unixPorts{prefix: prefix})
}

type unixPorts struct{ prefix string }

func (u *unixPorts) Listen(port uint32) (net.Listener, error) {
	path := UnixPortPath(u.prefix, port)
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	return ln, nil
}

func (u *unixPorts) Dial(context.Context, uint32) (net.Conn, error) { return nil, ErrNoHostDial }

func (u *unixPorts) Close() error { return nil }

var (
	_ Transport = (*unixPorts)(nil)
	_ Transport = (*hybrid)(nil)
	_ Transport = (*vhostVsock)(nil)
	_ Transport = (*serial)(nil)
)
