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
// a host that hangs up or says something else means "fetch again".
func TestAckBootstrap(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reply string
		ok    bool
	}{
		{"confirmed", wire.BootstrapDone, true},
		{"hung up", "", false},
		{"other", "OSB1-???", false},
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
			err := AckBootstrap(g, 5*time.Second)
			if (err == nil) != tc.ok || (!tc.ok && !errors.Is(err, ErrBootstrapNotClosed)) {
				t.Fatalf("AckBootstrap = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}
