package runner

// What a guest may do on the runner's channel ports. The agent runs inside the guest,
// so every connection on these ports may come from it rather than from the supervisor:
//
//   - The bootstrap port hands out the sandbox token, the gateway CA and this boot's
//     instance secret. It serves them once per boot, to the first connection that
//     completes the handshake (wire.BootstrapAck), which is the supervisor as PID 1
//     before any agent process exists, and is closed right after.
//   - The gateway and egress ports take only connections that start with the instance
//     preamble (wire.CheckPreamble): the agent never sees the secret, so it cannot
//     reach the gateway bridge or the egress relay on its own.
//   - Each of them holds at most a configured number of open streams (Limits), so a
//     guest cannot exhaust the runner's descriptors or the gateway's.

import (
	"cmp"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/openshell/openshell/guest/channel/wire"
)

// Timeouts of the guest handshakes (a gate may set its own, for tests).
var (
	// bootstrapTimeout bounds sending the document and receiving the acknowledgement.
	bootstrapTimeout = 10 * time.Second
	// preambleTimeout bounds how long a new connection may take to send its preamble.
	preambleTimeout = 10 * time.Second
	// lingerTimeout bounds draining a refused connection (lingerClose).
	lingerTimeout = 250 * time.Millisecond
)

// refusalLogEvery spaces the log lines about refused connections: one line at the
// start of a burst, then at most one per interval while it lasts, each with the count.
const refusalLogEvery = 10 * time.Second

// newInstanceSecret mints this boot's instance secret.
func newInstanceSecret() (wire.Secret, error) {
	var s wire.Secret
	if _, err := rand.Read(s[:]); err != nil {
		return s, fmt.Errorf("runner: mint the instance secret: %w", err)
	}
	return s, nil
}

// serveBootstrapOnce serves doc to guest connections on l, one at a time, until one
// acknowledges it; then it closes l, confirms that to the guest, wipes doc and
// returns. It also returns when l fails (closed at shutdown).
func serveBootstrapOnce(l net.Listener, doc []byte, box *statusBox, log *slog.Logger) {
	defer clear(doc)
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		guestTL, err := sendBootstrap(c, doc)
		if err != nil {
			c.Close()
			box.update(func(s *Status) { s.BootstrapUnacked++ })
			log.Warn("bootstrap: the guest did not take its config; serving it again to the next connection", "err", err)
			continue
		}
		// Close the port before telling the guest, which goes on (and eventually starts
		// the agent) only after it has heard so.
		l.Close()
		c.SetWriteDeadline(time.Now().Add(bootstrapTimeout))
		if _, err := c.Write(wire.AppendHostClock([]byte(wire.BootstrapDone), time.Now())); err != nil {
			log.Warn("bootstrap: confirm the closed port to the guest", "err", err)
		}
		c.Close()
		now := time.Now().UTC()
		box.update(func(s *Status) {
			s.Bootstrap++
			if s.State == StateBooting {
				s.State, s.BootedAt = StateRunning, now
				if !s.ClaimedAt.IsZero() {
					guestTL = nil // a claimed VM booted for its pool, before this create
				}
				s.Timeline = append(s.Timeline, guestSteps(guestTL, now)...)
			}
		})
		log.Info("guest fetched its bootstrap config; the bootstrap port is closed for this boot")
		return
	}
}

// sendBootstrap writes doc and waits for the guest's acknowledgement, which may carry
// the guest's boot timeline (nil when it does not, or when it does not parse: the
// timeline is for the record, never a reason to refuse the guest).
func sendBootstrap(c net.Conn, doc []byte) (*guestTimeline, error) {
	c.SetDeadline(time.Now().Add(bootstrapTimeout))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(doc); err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	var ack [len(wire.BootstrapAck)]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		return nil, fmt.Errorf("no acknowledgement: %w", err)
	}
	switch string(ack[:]) {
	case wire.BootstrapAck:
		return nil, nil
	case wire.BootstrapAckTimeline:
		tl, err := wire.ReadTimeline(c)
		if err != nil {
			return nil, fmt.Errorf("acknowledgement: %w", err)
		}
		return &guestTimeline{tl: tl, received: time.Now().UTC()}, nil
	}
	return nil, fmt.Errorf("acknowledgement %q, want %q", ack[:], wire.BootstrapAck)
}

// stamp records that the boot step phase ended now.
func (s *Status) stamp(phase string) {
	s.Timeline = append(s.Timeline, wire.HostStep{Phase: phase, At: time.Now().UTC()})
}

// guestTimeline is a guest's timeline and when the runner received it.
type guestTimeline struct {
	tl       wire.GuestTimeline
	received time.Time
}

// guestSteps turns the guest's timeline into host-clock steps ending with the
// bootstrap acknowledged at ackAt; each step is kept between the last one before it
// and ackAt, so a skewed guest clock cannot reorder the host's steps.
func guestSteps(g *guestTimeline, ackAt time.Time) []wire.HostStep {
	var out []wire.HostStep
	if g != nil {
		out = g.tl.HostTimes(g.received)
	}
	out = append(out, wire.HostStep{Phase: "bootstrap", At: ackAt})
	for i := range out {
		if out[i].At.After(ackAt) {
			out[i].At = ackAt
		}
		if i > 0 && out[i].At.Before(out[i-1].At) {
			out[i].At = out[i-1].At
		}
	}
	return out
}

// gate admits guest connections to one channel port: at most limit open at once,
// each only after a valid instance preamble.
type gate struct {
	port   string // "gateway" or "egress", for logs
	limit  int
	secret wire.Secret
	box    *statusBox
	log    *slog.Logger
	// refused counts into the port's status field (a bad preamble counts into the
	// one BadPreamble of both ports).
	refused func(*Status)
	// preambleWait and linger override preambleTimeout and lingerTimeout when set.
	preambleWait, linger time.Duration

	open              atomic.Int64
	lingering         atomic.Int64 // refused connections being drained (closeRefused)
	fullLog, wrongLog refusalLog
}

// refusalLog rate-limits the log line of a kind of refusal.
type refusalLog struct {
	mu   sync.Mutex
	last time.Time
	n    int // refusals since the last line
}

// note counts one refusal and tells whether to log now, with the refusals counted
// since the last line (this one included).
func (r *refusalLog) note(now time.Time) (bool, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n++
	if !r.last.IsZero() && now.Sub(r.last) < refusalLogEvery {
		return false, 0
	}
	n := r.n
	r.n, r.last = 0, now
	return true, n
}

func (g *gate) acquire() bool {
	if g.open.Add(1) > int64(g.limit) {
		g.open.Add(-1)
		return false
	}
	return true
}

func (g *gate) release() { g.open.Add(-1) }

func (g *gate) refuseFull() {
	g.box.update(g.refused)
	if ok, n := g.fullLog.note(time.Now()); ok {
		g.log.Warn("guest channel: too many open streams on the "+g.port+" port; refusing new connections (raise limits."+g.port+"_streams in the runner spec if the workload needs more)",
			"port", g.port, "limit", g.limit, "refused_since_last_log", n, "log_every", refusalLogEvery)
	}
}

func (g *gate) refuseBad(err error) {
	g.box.update(func(s *Status) { s.BadPreamble++ })
	if ok, n := g.wrongLog.note(time.Now()); ok {
		g.log.Warn("guest channel: refused a connection without this boot's instance preamble (not the supervisor)",
			"port", g.port, "err", err, "refused_since_last_log", n, "log_every", refusalLogEvery)
	}
}

// lingerClose discards what the guest already sent (a little, briefly) before
// closing: a Unix socket closed with unread data resets instead of ending, and the
// vsock backend does not pass that reset on, which would leave the guest's end of a
// refused connection open.
func lingerClose(c net.Conn, d time.Duration) {
	c.SetReadDeadline(time.Now().Add(d))
	io.Copy(io.Discard, io.LimitReader(c, 64<<10))
	c.Close()
}

// maxLingering bounds the refused connections drained at once (closeRefused); past
// it a refused connection is closed at once: a flood must not hold descriptors.
const maxLingering = 64

// closeRefused ends a connection refused for want of a slot. Its preamble may have
// arrived already: it is drained first (lingerClose, in the background), or the close
// would reset the stream, which the guest never hears of through the vsock backend.
func (g *gate) closeRefused(c net.Conn) {
	if g.lingering.Add(1) > maxLingering {
		g.lingering.Add(-1)
		c.Close()
		return
	}
	go func() {
		defer g.lingering.Add(-1)
		lingerClose(c, cmp.Or(g.linger, lingerTimeout))
	}()
}

// gatedListener is l behind g: Accept returns only admitted connections, whose Close
// frees their slot.
type gatedListener struct {
	net.Listener
	g     *gate
	ready chan net.Conn
	done  chan struct{}
	once  sync.Once
}

// listen starts admitting connections from l.
func (g *gate) listen(l net.Listener) *gatedListener {
	gl := &gatedListener{Listener: l, g: g, ready: make(chan net.Conn), done: make(chan struct{})}
	go gl.loop()
	return gl
}

func (gl *gatedListener) loop() {
	defer gl.Close()
	for {
		c, err := gl.Listener.Accept()
		if err != nil {
			return
		}
		if !gl.g.acquire() {
			gl.g.refuseFull()
			gl.g.closeRefused(c)
			continue
		}
		go gl.admit(c)
	}
}

func (gl *gatedListener) admit(c net.Conn) {
	g := gl.g
	c.SetReadDeadline(time.Now().Add(cmp.Or(g.preambleWait, preambleTimeout)))
	if err := wire.CheckPreamble(c, g.secret); err != nil {
		g.refuseBad(err)
		lingerClose(c, cmp.Or(g.linger, lingerTimeout))
		gl.g.release()
		return
	}
	c.SetReadDeadline(time.Time{})
	ac := &admittedConn{Conn: c, release: gl.g.release}
	select {
	case gl.ready <- ac:
	case <-gl.done:
		ac.Close()
	}
}

func (gl *gatedListener) Accept() (net.Conn, error) {
	select {
	case c := <-gl.ready:
		return c, nil
	case <-gl.done:
		return nil, net.ErrClosed
	}
}

func (gl *gatedListener) Close() error {
	var err error
	gl.once.Do(func() {
		close(gl.done)
		err = gl.Listener.Close()
		if errors.Is(err, net.ErrClosed) {
			err = nil
		}
	})
	return err
}

// admittedConn frees its gate slot once, on Close.
type admittedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *admittedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// CloseWrite passes a half-close through when the transport has one (the relay and
// the gateway bridge use it to end one direction of a stream).
func (c *admittedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// ReadFrom and WriteTo keep the transport's fast paths (splice between a Unix and a
// TCP socket) that wrapping the connection would otherwise hide from io.Copy.
func (c *admittedConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

func (c *admittedConn) WriteTo(w io.Writer) (int64, error) {
	if wt, ok := c.Conn.(io.WriterTo); ok {
		return wt.WriteTo(w)
	}
	return io.Copy(w, struct{ io.Reader }{c.Conn})
}
