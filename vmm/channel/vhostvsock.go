package channel

import (
	"context"
	"fmt"
	"net"
	"sync"

	"github.com/mdlayher/vsock"
)

// NewVhostVsock is the host end for a kernel vhost-vsock device: real AF_VSOCK on the
// host. All guests share the host's port space, so one AF_VSOCK listener per port is
// shared by every Host in this process and connections are routed by the guest's CID;
// a connection from any other CID is refused.
func NewVhostVsock(cid uint32) *Host {
	return New(TransportVhostVsock, &vhostVsock{cid: cid})
}

type vhostVsock struct{ cid uint32 }

func (v *vhostVsock) Listen(port uint32) (net.Listener, error) {
	return vsockMux.subscribe(port, v.cid)
}

func (v *vhostVsock) Dial(ctx context.Context, port uint32) (net.Conn, error) {
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := vsock.Dial(v.cid, port, nil)
		ch <- res{c, err}
	}()
	select {
	case r := <-ch:
		return r.c, r.err
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.c != nil {
				_ = r.c.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

func (v *vhostVsock) Close() error { return nil }

// portMux shares AF_VSOCK listeners between guests.
type portMux struct {
	mu    sync.Mutex
	ports map[uint32]*sharedPort
}

var vsockMux = &portMux{ports: map[uint32]*sharedPort{}}

type sharedPort struct {
	ln   net.Listener
	subs map[uint32]*cidListener
}

func (m *portMux) subscribe(port, cid uint32) (net.Listener, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sp := m.ports[port]
	if sp == nil {
		ln, err := vsock.Listen(port, nil)
		if err != nil {
			return nil, err
		}
		sp = &sharedPort{ln: ln, subs: map[uint32]*cidListener{}}
		m.ports[port] = sp
		go m.serve(port, sp)
	}
	if _, dup := sp.subs[cid]; dup {
		return nil, fmt.Errorf("port %d already has a listener for guest CID %d", port, cid)
	}
	l := &cidListener{mux: m, port: port, cid: cid, conns: make(chan net.Conn, 16), done: make(chan struct{})}
	sp.subs[cid] = l
	return l, nil
}

func (m *portMux) serve(port uint32, sp *sharedPort) {
	for {
		c, err := sp.ln.Accept()
		if err != nil {
			return // closed when the last subscriber left
		}
		cid := uint32(0)
		if a, ok := c.RemoteAddr().(*vsock.Addr); ok {
			cid = a.ContextID
		}
		m.mu.Lock()
		l := sp.subs[cid]
		m.mu.Unlock()
		if l == nil {
			_ = c.Close()
			continue
		}
		select {
		case l.conns <- c:
		case <-l.done:
			_ = c.Close()
		}
	}
}

func (m *portMux) unsubscribe(l *cidListener) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sp := m.ports[l.port]
	if sp == nil || sp.subs[l.cid] != l {
		return
	}
	delete(sp.subs, l.cid)
	if len(sp.subs) == 0 {
		_ = sp.ln.Close()
		delete(m.ports, l.port)
	}
}

type cidListener struct {
	mux       *portMux
	port, cid uint32
	conns     chan net.Conn
	done      chan struct{}
	once      sync.Once
}

func (l *cidListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *cidListener) Close() error {
	l.once.Do(func() {
		close(l.done)
		l.mux.unsubscribe(l)
	})
	return nil
}

func (l *cidListener) Addr() net.Addr { return &vsock.Addr{ContextID: vsock.Host, Port: l.port} }
