//go:build linux

package main

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/guest/channel"
)

// XferPort is the vsock port of the transfer benchmark's raw leg: the guest dials
// the host there (as the supervisor dials the gateway port; the VM's vsock backend
// hands the connection to the host's Unix socket for the port) and the host times
// bulk bytes over the bare channel, without gRPC, the runner or the gateway, so the
// transfer bench can say which leg caps a sandbox's upload and download.
//
// On each connection the host sends one request: an op byte, a flag byte and an
// 8-byte big-endian count. Ops: 'w' the guest reads count bytes and discards them;
// 'f' the same into /xfer.bin with one fsync at the end; 'r' the guest writes count
// bytes; 'b' the guest answers with its socket's vsock buffer size (8 bytes). After
// 'w' and 'f' the guest answers with the 8-byte count it read. Flag 1 sets the guest
// socket's vsock buffer to 4 MiB first (channel.SetVsockBuffer, as the gateway
// connection's). Then the guest dials again.
const XferPort = 7071

// serveXfer dials the host's XferPort in the background, one request per connection.
func serveXfer() error {
	go func() {
		for {
			c, err := channel.DialHost(context.Background(), XferPort)
			if err != nil {
				time.Sleep(200 * time.Millisecond)
				continue
			}
			xfer(c)
		}
	}()
	return nil
}

func xfer(c net.Conn) {
	defer c.Close()
	var req [10]byte
	if _, err := io.ReadFull(c, req[:]); err != nil {
		return
	}
	if req[1] == 1 {
		channel.SetVsockBuffer(c, 4<<20)
	}
	buf := make([]byte, 1<<20)
	switch req[0] {
	case 'w', 'f':
		var dst io.Writer = io.Discard
		var f *os.File
		if req[0] == 'f' {
			var err error
			if f, err = os.Create("/xfer.bin"); err != nil {
				return
			}
			defer os.Remove("/xfer.bin")
			defer f.Close()
			dst = f
		}
		n, _ := io.CopyBuffer(struct{ io.Writer }{dst}, io.LimitReader(c, int64(binary.BigEndian.Uint64(req[2:]))), buf)
		if f != nil {
			_ = f.Sync()
		}
		var out [8]byte
		binary.BigEndian.PutUint64(out[:], uint64(n))
		_, _ = c.Write(out[:])
	case 'b':
		var out [8]byte
		binary.BigEndian.PutUint64(out[:], vsockBuffer(c))
		_, _ = c.Write(out[:])
	case 'r':
		left := int64(binary.BigEndian.Uint64(req[2:]))
		for left > 0 {
			n, err := c.Write(buf[:min(int64(len(buf)), left)])
			left -= int64(n)
			if err != nil {
				return
			}
		}
	}
}

// vsockBuffer is c's SO_VM_SOCKETS_BUFFER_SIZE (0 if it cannot be read).
func vsockBuffer(c net.Conn) uint64 {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0
	}
	var n uint64
	_ = rc.Control(func(fd uintptr) {
		v, err := unix.GetsockoptUint64(int(fd), unix.AF_VSOCK, unix.SO_VM_SOCKETS_BUFFER_SIZE)
		if err == nil {
			n = v
		}
	})
	return n
}
