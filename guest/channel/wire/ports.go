package wire

import (
	"fmt"
	"net"
	"sync"
)

// Ports is the listener side of the stream multiplexer, the same on both ends: a
// net.Listener per vsock-style port, fed with the streams whose header names that
// port. Side ("host" or "guest") only labels the listeners' addresses.
type Ports struct {
	side string
	mu   sync.Mutex
	ls   map[uint32]*PortListener
}

// NewPorts returns an empty port table for one end of the channel.
func NewPorts(side string) *Ports {
	return &Ports{side: side, ls: map[uint32]*PortListener{}}
}

// Listen registers a listener for port; a port has at most one.
func (p *Ports) Listen(port uint32) (*PortListener, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, dup := p.ls[port]; dup {
		return nil, fmt.Errorf("port %d already has a listener", port)
	}
	l := &PortListener{ports: p, port: port, conns: make(chan net.Conn, 16), done: make(chan struct{})}
	p.ls[port] = l
	return l, nil
}

// Deliver hands a stream whose header named port to that port's listener, or
// closes it when nobody listens there (as a refused vsock connection would be).
func (p *Ports) Deliver(port uint32, c net.Conn) {
	p.mu.Lock()
	l := p.ls[port]
	p.mu.Unlock()
	if l == nil {
		_ = c.Close()
		return
	}
	select {
	case l.conns <- c:
	case <-l.done:
		_ = c.Close()
	}
}

// CloseAll closes every listener.
func (p *Ports) CloseAll() {
	p.mu.Lock()
	ls := make([]*PortListener, 0, len(p.ls))
	for _, l := range p.ls {
		ls = append(ls, l)
	}
	p.mu.Unlock()
	for _, l := range ls {
		_ = l.Close()
	}
}

// PortListener is a net.Listener for one port of the multiplexer.
type PortListener struct {
	ports *Ports
	port  uint32
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

// Accept returns the next stream for the port.
func (l *PortListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close unregisters the listener; streams for the port are refused afterwards.
func (l *PortListener) Close() error {
	l.once.Do(func() {
		close(l.done)
		l.ports.mu.Lock()
		if l.ports.ls[l.port] == l {
			delete(l.ports.ls, l.port)
		}
		l.ports.mu.Unlock()
	})
	return nil
}

// Done is closed when the listener is.
func (l *PortListener) Done() <-chan struct{} { return l.done }

// Addr names the port and the end it listens on.
func (l *PortListener) Addr() net.Addr { return portAddr{side: l.ports.side, port: l.port} }

type portAddr struct {
	side string
	port uint32
}

func (a portAddr) Network() string { return "virtio-serial" }
func (a portAddr) String() string  { return fmt.Sprintf("%s:%d", a.side, a.port) }
