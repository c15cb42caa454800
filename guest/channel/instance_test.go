package channel

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/openshell/openshell/guest/channel/wire"
)

// TestAckBootstrap: the guest goes on only when the host confirms the closed port;
// a host that hangs up or says something else means "fetch again". The host's clock
// after the confirmation is returned; a host that sends none, or a part of one, gives
// none and is still a confirmation.
func TestAckBootstrap(t *testing.T) {
	clock := time.Date(2026, 12, 6, 21, 0, 0, 123456789, time.UTC)
	withClock := string(wire.AppendHostClock([]byte(wire.BootstrapDone), clock))
	for _, tc := range []struct {
		name  string
		reply string
		ok    bool
		clock time.Time
	}{
		{"confirmed with the host's clock", withClock, true, clock},
		{"confirmed, no clock", wire.BootstrapDone, true, time.Time{}},
		{"confirmed, clock cut short", withClock[:len(withClock)-3], true, time.Time{}},
		{"hung up", "", false, time.Time{}},
		{"other", "OSB1-???", false, time.Time{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, h := net.Pipe()
			defer g.Close()
			go func() {
				defer h.Close()
				ack := make([]byte, len(wire.BootstrapAck))
				if _, err := io.ReadFull(h, ack); err != nil || string(ack) != wire.BootstrapAck {
					return
				}
				io.WriteString(h, tc.reply)
			}()
			got, err := AckBootstrapTimeline(g, 5*time.Second, nil)
			if (err == nil) != tc.ok || (!tc.ok && !errors.Is(err, ErrBootstrapNotClosed)) {
				t.Fatalf("AckBootstrapTimeline = %v, want ok=%v", err, tc.ok)
			}
			if !got.Equal(tc.clock) {
				t.Errorf("host clock %v, want %v", got, tc.clock)
			}
		})
	}
}
