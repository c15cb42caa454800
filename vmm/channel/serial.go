package channel

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/openshell/openshell/guest/channel/wire"
)

// NewSerial is the host end for a virtio-serial port named wire.PortName whose host
// side is a Unix socket server at sockPath (the VMM serves it). The host connects
// (retrying until the VMM has created the socket, and again after each disconnect), sends wire.Hello
// and runs a yamux session over the port; each stream starts with a header naming
// its vsock-style port. Close stops it.
func NewSerial(sockPath string, log *slog.Logger) *Host {
	if log == nil {
		log = slog.Default()
	}
	s := &serial{
		path:  sockPath,
		log:   log.With("channel", TransportVirtioSerial, "socket", sockPath),
		ports: wire.NewPorts("host"),
		done:  make(chan struct{}),
		ready: make(chan struct{}),
	}
	go s.run()
	return New(TransportVirtioSerial, s)
}

type serial struct {
	path string
	log  *slog.Logger

	mu        sync.Mutex
	sess      *yamux.Session
	ready     chan struct{} // closed while sess != nil; replaced when it dies
	ports     *wire.Ports
	done      chan struct{}
	closeOnce sync.Once
	routing   sync.WaitGroup // streams whose port header is being read and delivered
	held      chan struct{}  // non-nil while detached: run waits for it to close
	// Set by Attach, cleared once the guest has answered on a connection; while set,
	// every connection is checked (awaitAnswer).
	expectAnswer bool
	checking     *yamux.Session // the session awaitAnswer is watching, if any
	conn         *heardConn     // sess's connection
}

// guestAnswerWait is how long a guest that was let run again (Attach) has to answer
// on its connection before the host end drops it and greets the guest again.
var guestAnswerWait = 3 * time.Second

// heardConn notes the first byte that arrives from the guest.
type heardConn struct {
	net.Conn
	once  sync.Once
	heard chan struct{} // closed at the first byte
}

func newHeardConn(c net.Conn) *heardConn { return &heardConn{Conn: c, heard: make(chan struct{})} }

func (c *heardConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.once.Do(func() { close(c.heard) })
	}
	return n, err
}

func yamuxConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	c.LogOutput = io.Discard
	c.Logger = nil
	// The guest may be paused or slow under software emulation: be tolerant before declaring death.
	c.ConnectionWriteTimeout = 30 * time.Second
	c.KeepAliveInterval = 15 * time.Second
	return c
}

func (s *serial) run() {
	backoff := 10 * time.Millisecond
	for {
		select {
		case <-s.done:
			return
		default:
		}
		s.mu.Lock()
		held := s.held
		s.mu.Unlock()
		if held != nil {
			select {
			case <-s.done:
				return
			case <-held:
			}
		}
		conn, err := net.Dial("unix", s.path)
		if err != nil {
			select {
			case <-s.done:
				return
			case <-time.After(backoff):
			}
			if backoff < 500*time.Millisecond {
				backoff *= 2
			}
			continue
		}
		backoff = 10 * time.Millisecond
		if _, err := io.WriteString(conn, wire.Hello); err != nil {
			_ = conn.Close()
			continue
		}
		hc := newHeardConn(conn)
		sess, err := yamux.Server(hc, yamuxConfig())
		if err != nil {
			_ = conn.Close()
			continue
		}
		s.mu.Lock()
		s.sess, s.conn = sess, hc
		close(s.ready)
		check := s.expectAnswer
		s.mu.Unlock()
		if check {
			s.startAnswerCheck(sess, hc)
		}
		s.log.Debug("serial channel connected")
		s.acceptLoop(sess)
		_ = sess.Close()
		s.mu.Lock()
		s.sess, s.conn = nil, nil
		s.ready = make(chan struct{})
		s.mu.Unlock()
		s.log.Debug("serial channel disconnected; reconnecting")
		select {
		case <-s.done:
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *serial) acceptLoop(sess *yamux.Session) {
	go func() {
		select {
		case <-s.done:
			_ = sess.Close()
		case <-sess.CloseChan():
		}
	}()
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			return
		}
		s.routing.Add(1)
		go func() { defer s.routing.Done(); s.route(st) }()
	}
}

func (s *serial) route(st *yamux.Stream) {
	_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
	port, err := wire.ReadHeader(st)
	if err != nil {
		s.log.Warn("serial channel: dropping stream", "err", err)
		_ = st.Close()
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	s.ports.Deliver(port, st)
}

func (s *serial) Listen(port uint32) (net.Listener, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.done:
		return nil, ErrClosed
	default:
	}
	l, err := s.ports.Listen(port)
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return l, nil
}

func (s *serial) Dial(ctx context.Context, port uint32) (net.Conn, error) {
	for {
		s.mu.Lock()
		sess, ready := s.sess, s.ready
		s.mu.Unlock()
		if sess != nil {
			st, err := sess.OpenStream()
			if err == nil {
				if err := wire.WriteHeader(st, port); err != nil {
					_ = st.Close()
					return nil, err
				}
				return st, nil
			}
		}
		select {
		case <-ready:
			if sess != nil {
				time.Sleep(20 * time.Millisecond) // session died under us; wait for the next
			}
		case <-s.done:
			return nil, ErrClosed
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Detach drops the connection to the VMM's port and stays away until Attach, so the
// guest sees the port closed (its session ends and it reconnects once a host end is
// back). Used before a VM is saved: the saved guest then knows its old session is
// gone, whichever host end it meets after a restore.
func (s *serial) Detach() {
	s.mu.Lock()
	if s.held == nil {
		s.held = make(chan struct{})
	}
	sess := s.sess
	s.mu.Unlock()
	if sess != nil {
		_ = sess.Close()
	}
}

// Attach lets the host end connect again after Detach; it is also called when a
// restored guest is let run. Either way the guest runs on from a moment it was
// frozen at, which may have been just as it read its port's end: a greeting that
// arrives then is consumed or dropped with the old session (a virtio-serial port
// drops unread data when the guest closes it), and the guest waits for one that
// would only come after the session's keepalive gives up (45 s). So until the
// guest has answered once, a connection on which nothing arrives within
// guestAnswerWait is dropped and the guest greeted again.
func (s *serial) Attach() {
	s.mu.Lock()
	if s.held != nil {
		close(s.held)
		s.held = nil
	}
	s.expectAnswer = true
	sess, hc := s.sess, s.conn
	s.mu.Unlock()
	if sess != nil {
		s.startAnswerCheck(sess, hc)
	}
}

// startAnswerCheck watches sess (one watcher per session).
func (s *serial) startAnswerCheck(sess *yamux.Session, hc *heardConn) {
	s.mu.Lock()
	if s.checking == sess {
		s.mu.Unlock()
		return
	}
	s.checking = sess
	s.mu.Unlock()
	go s.awaitAnswer(sess, hc)
}

// awaitAnswer pings the guest (a yamux ping: answered by a guest whose session is
// up, skipped as noise by one still waiting for a greeting) and drops the
// connection when nothing arrives in time; run then connects and greets again.
func (s *serial) awaitAnswer(sess *yamux.Session, hc *heardConn) {
	go func() { _, _ = sess.Ping() }()
	t := time.NewTimer(guestAnswerWait)
	defer t.Stop()
	select {
	case <-hc.heard:
		s.mu.Lock()
		s.expectAnswer = false
		s.mu.Unlock()
	case <-t.C:
		s.log.Warn("serial channel: the guest did not answer since it was let run; greeting it again", "waited", guestAnswerWait)
		_ = sess.Close()
	case <-sess.CloseChan():
	case <-s.done:
	}
}

func (s *serial) Close() error {
	s.closeOnce.Do(func() {
		close(s.done)
		s.mu.Lock()
		if s.sess != nil {
			_ = s.sess.Close()
		}
		s.mu.Unlock()
		s.ports.CloseAll()
	})
	return nil
}
