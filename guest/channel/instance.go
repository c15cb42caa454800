package channel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/openshell/openshell/guest/channel/wire"
)

// DialHostAs connects to the host on port and sends the instance preamble first, as
// the runner requires on the gateway and egress ports (see wire.CheckPreamble).
func DialHostAs(ctx context.Context, port uint32, secret wire.Secret) (net.Conn, error) {
	c, err := DialHost(ctx, port)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetWriteDeadline(dl)
	} else {
		_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	}
	if _, err := c.Write(wire.AppendPreamble(make([]byte, 0, wire.PreambleLen), secret)); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("guest channel: send the instance preamble on port %d: %w", port, err)
	}
	_ = c.SetWriteDeadline(time.Time{})
	return c, nil
}

// ErrBootstrapNotClosed means the host did not confirm that it closed the bootstrap
// port after the acknowledgement: the document may still be served, so the guest
// must fetch it again rather than go on.
var ErrBootstrapNotClosed = errors.New("guest channel: the host did not confirm the bootstrap port is closed")

// AckBootstrap ends the bootstrap handshake on c once the guest has decoded and
// checked the document: it acknowledges it and waits (at most timeout) for the
// host's word that the bootstrap port is closed.
func AckBootstrap(c net.Conn, timeout time.Duration) error {
	_, err := AckBootstrapTimeline(c, timeout, nil)
	return err
}

// AckBootstrapTimeline is AckBootstrap that also reports the guest's boot timeline
// (nil: none) with the acknowledgement, and returns the host's clock sent with the
// confirmation (zero when the host sent none).
func AckBootstrapTimeline(c net.Conn, timeout time.Duration, tl *wire.GuestTimeline) (hostClock time.Time, err error) {
	_ = c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	ack := []byte(wire.BootstrapAck)
	if tl != nil {
		var err error
		if ack, err = wire.AppendTimelineAck(nil, *tl); err != nil {
			ack = []byte(wire.BootstrapAck)
		}
	}
	if _, err := c.Write(ack); err != nil {
		return time.Time{}, fmt.Errorf("guest channel: acknowledge the bootstrap config: %w", err)
	}
	var b [len(wire.BootstrapDone)]byte
	if _, err := io.ReadFull(c, b[:]); err != nil || string(b[:]) != wire.BootstrapDone {
		return time.Time{}, fmt.Errorf("%w (read %q: %v)", ErrBootstrapNotClosed, b[:], err)
	}
	// The clock follows in the same write; a host that sends none hangs up (EOF).
	var clk [wire.HostClockLen]byte
	if _, err := io.ReadFull(c, clk[:]); err == nil {
		if t, ok := wire.ParseHostClock(clk); ok {
			hostClock = t
		}
	}
	return hostClock, nil
}
