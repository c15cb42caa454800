//go:build !linux

package channel

import (
	"context"
	"errors"
	"net"
)

// ErrNotLinux: the guest end only exists inside a Linux guest.
var errNotLinux = errors.New("guest channel: only available inside a Linux guest")

// DialHost is only implemented on Linux.
func DialHost(ctx context.Context, port uint32) (net.Conn, error) { return nil, errNotLinux }

// Listen is only implemented on Linux.
func Listen(port uint32) (net.Listener, error) { return nil, errNotLinux }

// Detect is only implemented on Linux.
func Detect() (string, error) { return "", errNotLinux }

// SetVsockBuffer does nothing outside Linux.
func SetVsockBuffer(net.Conn, uint64) {}

// watchReturns has nothing to watch outside Linux.
func watchReturns() {}

// SerialPort is only implemented on Linux.
func SerialPort() (string, error) { return "", errNotLinux }
