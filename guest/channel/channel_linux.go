package channel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/guest/channel/wire"
)

// sysfs roots, variables so tests can point them elsewhere.
var (
	virtioPortsDir = "/sys/class/virtio-ports"
	virtioDevsDir  = "/sys/bus/virtio/devices"
	devDir         = "/dev"
)

const virtioIDVsock = "0x0013"

// ErrNoChannel means the VM has neither a vsock device nor the serial port.
var ErrNoChannel = errors.New("guest channel: no vsock device and no virtio-serial port " + wire.PortName)

// Detect reports the transport: vsock when the VM has a virtio vsock device, else
// the virtio-serial port named wire.PortName.
func Detect() (string, error) {
	devs, _ := os.ReadDir(virtioDevsDir)
	for _, d := range devs {
		b, err := os.ReadFile(filepath.Join(virtioDevsDir, d.Name(), "device"))
		if err == nil && strings.TrimSpace(string(b)) == virtioIDVsock {
			return TransportVsock, nil
		}
	}
	if _, err := SerialPort(); err == nil {
		return TransportSerial, nil
	}
	return "", ErrNoChannel
}

// SerialPort returns the device (/dev/vportNpM) of the virtio-serial port named
// wire.PortName, found by its sysfs name.
func SerialPort() (string, error) {
	ents, err := os.ReadDir(virtioPortsDir)
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(virtioPortsDir, e.Name(), "name"))
		if err == nil && strings.TrimSpace(string(b)) == wire.PortName {
			return filepath.Join(devDir, e.Name()), nil
		}
	}
	return "", fmt.Errorf("guest channel: no virtio port named %s in %s", wire.PortName, virtioPortsDir)
}

// detected is the transport the first successful detection found: a VM's devices
// do not change while it runs (a copy restored from its memory has the same machine),
// and each look costs a dial a dozen sysfs reads (milliseconds of an emulated guest).
var detected atomic.Pointer[string]

// transport is Detect, looked up once per process when it succeeds.
func transport() (string, error) {
	if tr := detected.Load(); tr != nil {
		return *tr, nil
	}
	tr, err := Detect()
	if err == nil {
		detected.Store(&tr)
	}
	return tr, err
}

// DialHost connects to the host on port, retrying until ctx is done while the host
// end is not there yet (not listening, or the serial port not connected).
func DialHost(ctx context.Context, port uint32) (net.Conn, error) {
	backoff := 20 * time.Millisecond
	var lastErr error
	for {
		tr, err := transport()
		if err == nil {
			var c net.Conn
			switch tr {
			case TransportVsock:
				if c, err = dialVsock(ctx, port); err == nil && (port == PortGateway || port == PortBulk) {
					SetVsockBuffer(c, gatewayVsockBuffer)
				}
			case TransportSerial:
				c, err = serialMux.dial(ctx, port)
			}
			if err == nil {
				return c, nil
			}
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("guest channel: dial host port %d: %w (last error: %v)", port, ctx.Err(), lastErr)
		case <-time.After(backoff):
		}
		if backoff < 500*time.Millisecond {
			backoff *= 2
		}
	}
}

func dialVsock(ctx context.Context, port uint32) (net.Conn, error) {
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := vsock.Dial(HostCID, port, nil)
		if err != nil {
			// Not res{c, err}: a nil *vsock.Conn in a net.Conn is not a nil
			// interface, and closing it after a cancelled dial panics (in PID 1).
			ch <- res{nil, err}
			return
		}
		noteContextID(c)
		ch <- res{resetNoticing{c}, nil}
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

// gatewayVsockBuffer is the receive buffer of the gateway connection, which carries
// every relay (file transfers among them) as one gRPC connection. The host may send
// only as much as the guest's buffer has room for before it waits for the guest's
// credit update, a round trip that is slow under emulation: with the kernel's
// 256 KiB default a bulk upload stalls on it; measured through the VM's vsock
// backend under TCG, host→guest went from 30 to 40–63 MiB/s with 4 MiB. Memory is
// used only while received bytes wait to be read.
const gatewayVsockBuffer = 4 << 20

// SetVsockBuffer raises a vsock connection's buffer to n (best effort: the
// connection works with the default, only slower; other connections are left alone).
func SetVsockBuffer(c net.Conn, n uint64) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SetsockoptUint64(int(fd), unix.AF_VSOCK, unix.SO_VM_SOCKETS_BUFFER_MAX_SIZE, n)
		_ = unix.SetsockoptUint64(int(fd), unix.AF_VSOCK, unix.SO_VM_SOCKETS_BUFFER_SIZE, n)
	})
}

// Listen accepts host-initiated connections to port (only from the host).
func Listen(port uint32) (net.Listener, error) {
	tr, err := transport()
	if err != nil {
		return nil, err
	}
	if tr == TransportSerial {
		return serialMux.listen(port)
	}
	ln, err := vsock.Listen(port, nil)
	if err != nil {
		return nil, fmt.Errorf("guest channel: vsock listen on port %d: %w", port, err)
	}
	return &hostOnly{Listener: ln}, nil
}

// hostOnly drops connections from anything but the host CID.
type hostOnly struct{ net.Listener }

func (h *hostOnly) Accept() (net.Conn, error) {
	for {
		c, err := h.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if a, ok := c.RemoteAddr().(*vsock.Addr); ok && a.ContextID == HostCID {
			return c, nil
		}
		_ = c.Close()
	}
}

// serialSession keeps one yamux session over the serial port for the whole guest,
// re-established whenever the host end reconnects.
type serialSession struct {
	connMu sync.Mutex // serialises (re)connecting; may be held while waiting for the host
	mu     sync.Mutex // guards the fields below; never held while blocking
	sess   *yamux.Session
	f      *os.File

	ports *wire.Ports
}

var serialMux = &serialSession{ports: wire.NewPorts("guest")}

func (s *serialSession) current() *yamux.Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sess != nil && !s.sess.IsClosed() {
		return s.sess
	}
	return nil
}

func (s *serialSession) session(ctx context.Context) (*yamux.Session, error) {
	if sess := s.current(); sess != nil {
		return sess, nil
	}
	s.connMu.Lock()
	defer s.connMu.Unlock()
	if sess := s.current(); sess != nil {
		return sess, nil // someone else reconnected while we waited
	}
	s.mu.Lock()
	if s.f != nil {
		_ = s.f.Close()
		s.f = nil
	}
	s.mu.Unlock()
	path, err := SerialPort()
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("guest channel: open %s: %w", path, err)
	}
	// While the host end is not connected reads return EOF; WaitHello fails then and
	// the caller retries. Bound it by ctx via a read deadline when the port polls.
	if dl, ok := ctx.Deadline(); ok {
		_ = f.SetReadDeadline(dl)
	}
	br, err := wire.WaitHello(f)
	_ = f.SetReadDeadline(time.Time{})
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("guest channel: host end of %s not connected: %w", path, err)
	}
	rwc := struct {
		io.Reader
		io.Writer
		io.Closer
	}{br, f, f}
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	cfg.ConnectionWriteTimeout = 30 * time.Second
	cfg.KeepAliveInterval = 15 * time.Second
	sess, err := yamux.Client(rwc, cfg)
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	s.mu.Lock()
	s.sess, s.f = sess, f
	s.mu.Unlock()
	go s.acceptLoop(sess)
	return sess, nil
}

func (s *serialSession) dial(ctx context.Context, port uint32) (net.Conn, error) {
	sess, err := s.session(ctx)
	if err != nil {
		return nil, err
	}
	st, err := sess.OpenStream()
	if err != nil {
		return nil, err
	}
	if err := wire.WriteHeader(st, port); err != nil {
		_ = st.Close()
		return nil, err
	}
	return st, nil
}

func (s *serialSession) acceptLoop(sess *yamux.Session) {
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			return
		}
		go func() {
			_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
			port, err := wire.ReadHeader(st)
			_ = st.SetReadDeadline(time.Time{})
			if err != nil {
				_ = st.Close()
				return
			}
			s.ports.Deliver(port, st)
		}()
	}
}

// listen registers a port and keeps a session up in the background so that host
// dials reach the guest even if the guest never dials first.
func (s *serialSession) listen(port uint32) (net.Listener, error) {
	l, err := s.ports.Listen(port)
	if err != nil {
		return nil, fmt.Errorf("guest channel: %w", err)
	}
	go func() {
		for {
			select {
			case <-l.Done():
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			sess, err := s.session(ctx)
			cancel()
			if err != nil {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			select {
			case <-sess.CloseChan():
			case <-l.Done():
				return
			}
		}
	}()
	return l, nil
}

// Watching for the host end's return (HostReturns).
const (
	returnPollMin = 10 * time.Millisecond
	returnPollMax = 250 * time.Millisecond
)

var (
	returnWatch sync.Once
	lastCID     atomic.Uint32
)

// watchReturns starts, once, the serial transport's watcher: vsock needs none (see
// noteContextID).
func watchReturns() {
	returnWatch.Do(func() {
		if tr, err := transport(); err == nil && tr == TransportSerial {
			go serialMux.watchReturns()
		}
	})
}

// noteContextID reports a host return when a vsock connection's local context id is
// not the one of the previous connection: the guest was restored into another VM.
func noteContextID(c *vsock.Conn) {
	a, ok := c.LocalAddr().(*vsock.Addr)
	if !ok {
		return
	}
	if prev := lastCID.Swap(a.ContextID); prev != 0 && prev != a.ContextID {
		hostReturns.notify()
	}
}

// resetNoticing is a vsock connection to the host that reports a transport reset as
// a host return. A VM restored from a save on vhost-vsock keeps its context id, so
// noteContextID sees nothing; what it does see is the device's transport reset (QEMU
// sends one as it loads the saved state), on which the guest kernel fails every
// established vsock connection with ECONNRESET. Nothing else does: a host end that
// closes or resets a connection makes it read EOF, and a refused dial fails before
// there is a connection.
type resetNoticing struct{ net.Conn }

func (c resetNoticing) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	noticeReset(err)
	return n, err
}

func (c resetNoticing) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	noticeReset(err)
	return n, err
}

// CloseWrite and CloseRead keep the half-closes of the connection (relays end one
// direction at a time).
func (c resetNoticing) CloseWrite() error {
	if hc, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return hc.CloseWrite()
	}
	return errors.ErrUnsupported
}

func (c resetNoticing) CloseRead() error {
	if hc, ok := c.Conn.(interface{ CloseRead() error }); ok {
		return hc.CloseRead()
	}
	return errors.ErrUnsupported
}

// SyscallConn keeps the socket reachable (SetVsockBuffer).
func (c resetNoticing) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.New("guest channel: not a socket")
	}
	return sc.SyscallConn()
}

// resetQuiet is how long after one reported reset others are not reported: a reset
// fails every connection at once, and each would report it.
const resetQuiet = 2 * time.Second

var lastReset atomic.Int64 // unix nanoseconds of the last reported reset

func noticeReset(err error) {
	if err == nil || !errors.Is(err, syscall.ECONNRESET) {
		return
	}
	now := time.Now().UnixNano()
	prev := lastReset.Load()
	if now-prev < int64(resetQuiet) || !lastReset.CompareAndSwap(prev, now) {
		return
	}
	hostReturns.notify()
}

// watchReturns keeps the serial session up: when the host end goes, it polls for it
// (quickly at first) and reports each new session after the first. The host's
// greeting reaches only a guest that reads the port, so without this a restored
// guest would notice its host only at its next dial.
func (s *serialSession) watchReturns() {
	var last *yamux.Session
	wait := returnPollMin
	for {
		sess := s.current()
		if sess == nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			var err error
			sess, err = s.session(ctx)
			cancel()
			if err != nil {
				time.Sleep(wait)
				wait = min(2*wait, returnPollMax)
				continue
			}
		}
		wait = returnPollMin
		if last != nil && sess != last {
			hostReturns.notify()
		}
		last = sess
		<-sess.CloseChan()
	}
}
