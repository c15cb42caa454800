package wire

import (
	"errors"
	"net"
	"testing"
)

func TestPorts(t *testing.T) {
	p := NewPorts("host")
	l, err := p.Listen(1024)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Listen(1024); err == nil {
		t.Error("a second listener on one port was accepted")
	}
	if got := l.Addr().String(); got != "host:1024" {
		t.Errorf("Addr = %q", got)
	}

	a, b := net.Pipe()
	defer b.Close()
	p.Deliver(1024, a)
	c, err := l.Accept()
	if err != nil || c != a {
		t.Fatalf("Accept = %v, %v; want the delivered stream", c, err)
	}

	// Nobody listens on 1025: the stream is closed, as a refused connection.
	x, y := net.Pipe()
	p.Deliver(1025, x)
	if _, err := y.Read(make([]byte, 1)); err == nil {
		t.Error("stream to a port without listener was not closed")
	}

	p.CloseAll()
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after CloseAll = %v", err)
	}
	if _, err := p.Listen(1024); err != nil {
		t.Errorf("port not free again after close: %v", err)
	}
}
