// Package wire is the byte-level protocol shared by both ends of the virtio-serial
// channel transport: the handshake the host sends when it connects, and the header
// that starts every multiplexed stream naming the vsock-style port it is for. It has
// no dependencies so that host and guest code can both import it.
package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// PortName is the virtserialport name the guest looks for in /sys/class/virtio-ports.
const PortName = "openshell.0"

// Hello is written by the host right after it connects to the serial port; the guest
// starts its stream multiplexer only after reading it, so bytes left from an earlier
// connection are skipped.
const Hello = "\nOPENSHELL-CHANNEL-1\n"

// headerMagic starts every stream header.
var headerMagic = [4]byte{'O', 'S', 'P', '1'}

// HeaderLen is the size of a stream header.
const HeaderLen = 8

// ErrBadHeader means a stream did not start with a valid header.
var ErrBadHeader = errors.New("channel wire: bad stream header")

// AppendHeader appends the header naming port to b.
func AppendHeader(b []byte, port uint32) []byte {
	b = append(b, headerMagic[:]...)
	return binary.BigEndian.AppendUint32(b, port)
}

// ParseHeader decodes a header.
func ParseHeader(h []byte) (uint32, error) {
	if len(h) != HeaderLen {
		return 0, fmt.Errorf("%w: %d bytes, want %d", ErrBadHeader, len(h), HeaderLen)
	}
	if [4]byte(h[:4]) != headerMagic {
		return 0, fmt.Errorf("%w: magic %q", ErrBadHeader, h[:4])
	}
	return binary.BigEndian.Uint32(h[4:]), nil
}

// WriteHeader writes the header naming port to w.
func WriteHeader(w io.Writer, port uint32) error {
	_, err := w.Write(AppendHeader(make([]byte, 0, HeaderLen), port))
	return err
}

// ReadHeader reads a header from r.
func ReadHeader(r io.Reader) (uint32, error) {
	var h [HeaderLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, fmt.Errorf("channel wire: read stream header: %w", err)
	}
	return ParseHeader(h[:])
}

// WaitHello reads from r until it has seen Hello, discarding what comes before. The
// returned reader continues right after Hello (it may have buffered more bytes).
func WaitHello(r io.Reader) (*bufio.Reader, error) {
	br := bufio.NewReader(r)
	matched := 0
	for matched < len(Hello) {
		c, err := br.ReadByte()
		if err != nil {
			return nil, err
		}
		switch {
		case c == Hello[matched]:
			matched++
		case c == Hello[0]:
			matched = 1
		default:
			matched = 0
		}
	}
	return br, nil
}
