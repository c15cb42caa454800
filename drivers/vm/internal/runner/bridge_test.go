package runner

import (
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// A gateway that comes back while the bridge waits gets the guest's connection; one
// that stays away fails it once patience runs out.
func TestBridgeDialWaitsForGateway(t *testing.T) {
	// Reserve a port, free it, and listen there again only after a while: the gateway
	// restarting on its old address.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	var gw atomic.Value
	gw.Store(addr)
	back := make(chan net.Listener, 1)
	go func() {
		time.Sleep(700 * time.Millisecond)
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Error(err)
		}
		back <- l
	}()
	start := time.Now()
	c, got, err := bridgeDial(&gw, 4*time.Second)
	if err != nil {
		t.Fatalf("bridgeDial while the gateway restarts: %v", err)
	}
	c.Close()
	if l := <-back; l != nil {
		l.Close()
	}
	if got != addr || time.Since(start) < 600*time.Millisecond {
		t.Fatalf("connected to %s after %v; want %s once it listens again", got, time.Since(start), addr)
	}

	// Nobody comes back: an error after about the patience, not before.
	start = time.Now()
	if c, _, err := bridgeDial(&gw, 500*time.Millisecond); err == nil {
		c.Close()
		t.Fatal("bridgeDial to an address nobody listens on succeeded")
	}
	if d := time.Since(start); d < 500*time.Millisecond || d > 3*time.Second {
		t.Fatalf("gave up after %v; want about the 500ms patience", d)
	}
}
