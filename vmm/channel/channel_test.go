package channel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/openshell/openshell/guest/channel/wire"
)

func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "osch-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

// guestSession plays the guest's end on conn: it waits for the host's greeting and
// runs the multiplexer's client side.
func guestSession(t *testing.T, conn net.Conn) *yamux.Session {
	t.Helper()
	br, err := wire.WaitHello(conn)
	if err != nil {
		t.Fatalf("hello: %v", err)
	}
	sess, err := yamux.Client(struct {
		io.Reader
		io.Writer
		io.Closer
	}{br, conn, conn}, yamuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	return sess
}

// checkHostDial has the host end dial port on h while the guest's session answers
// the stream with the port its header named.
func checkHostDial(t *testing.T, h *Host, sess *yamux.Session, port uint32) {
	t.Helper()
	go func() {
		gs, err := sess.AcceptStream()
		if err != nil {
			return
		}
		p, _ := wire.ReadHeader(gs)
		fmt.Fprintf(gs, "port %d\n", p)
		_ = gs.Close()
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	dc, err := h.Dial(ctx, port)
	if err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(dc).ReadString('\n')
	_ = dc.Close()
	if want := fmt.Sprintf("port %d\n", port); line != want {
		t.Fatalf("host dial got %q, want %q", line, want)
	}
}

// TestSerialHost plays the VMM's serial socket server and the guest's multiplexer end and
// checks both directions, the port header, and reconnection after a disconnect.
func TestSerialHost(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "serial.sock")
	h := NewSerial(sock, nil)
	defer h.Close()
	ln, err := h.Listen(PortBootstrap)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := h.Listen(PortBootstrap); err == nil {
		t.Fatal("second listener on the same port accepted")
	}
	// The serial socket appears after the host started retrying.
	time.Sleep(50 * time.Millisecond)
	vmmEnd, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer vmmEnd.Close()

	for round := range 2 {
		conn, err := vmmEnd.Accept()
		if err != nil {
			t.Fatal(err)
		}
		sess := guestSession(t, conn)
		// guest → host
		st, err := sess.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		if err := wire.WriteHeader(st, PortBootstrap); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(st, "hello %d\n", round)
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		c, err := Accept(ctx, ln)
		cancel()
		if err != nil {
			t.Fatalf("round %d: accept: %v", round, err)
		}
		line, _ := bufio.NewReader(c).ReadString('\n')
		if line != fmt.Sprintf("hello %d\n", round) {
			t.Fatalf("round %d: got %q", round, line)
		}
		_ = c.Close()
		// host → guest
		checkHostDial(t, h, sess, 1030)
		// A stream to a port nobody listens on is closed, not left hanging.
		st2, _ := sess.OpenStream()
		_ = wire.WriteHeader(st2, 4242)
		_ = st2.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := st2.Read(make([]byte, 1)); err == nil {
			t.Fatal("stream to unknown port got data")
		}
		// Disconnect like a VMM restart: the host reconnects and says hello again.
		_ = sess.Close()
		_ = conn.Close()
	}
}

func TestHybridHost(t *testing.T) {
	dir := shortDir(t)
	uds := filepath.Join(dir, "v.sock")
	h := NewHybridVsock(uds)
	ln, err := h.Listen(PortGateway)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(uds + "_1024"); err != nil {
		t.Fatalf("guest-facing socket: %v", err)
	}
	// Play the backend's guest side: connect to <uds>_<port>.
	go func() {
		c, err := net.Dial("unix", uds+"_1024")
		if err == nil {
			io.WriteString(c, "from guest\n")
			c.Close()
		}
	}()
	c, err := Accept(t.Context(), ln)
	if err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(c).ReadString('\n')
	if line != "from guest\n" {
		t.Fatalf("got %q", line)
	}
	_ = ln.Close()
	if _, err := os.Stat(uds + "_1024"); !os.IsNotExist(err) {
		t.Fatalf("socket left after Close: %v", err)
	}

	// Host → guest: the backend takes "CONNECT <port>\n" and answers "OK ...".
	backend, err := net.Listen("unix", uds)
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	go func() {
		for {
			c, err := backend.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, _ := bufio.NewReader(c).ReadString('\n')
				if strings.TrimSpace(line) == "CONNECT 1030" {
					io.WriteString(c, "OK 1073741824\nguest data\n")
				} else {
					io.WriteString(c, "ERR\n")
				}
			}()
		}
	}()
	dc, err := h.Dial(t.Context(), 1030)
	if err != nil {
		t.Fatal(err)
	}
	line, _ = bufio.NewReader(dc).ReadString('\n')
	if line != "guest data\n" {
		t.Fatalf("data after OK: %q", line)
	}
	if _, err := h.Dial(t.Context(), 9); err == nil {
		t.Fatal("refused CONNECT accepted")
	}
}

func TestUnixPorts(t *testing.T) {
	prefix := filepath.Join(t.TempDir(), "vsock.sock")
	h := NewUnixPorts(prefix)
	ln, err := h.Listen(PortGateway)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// The VMM connects to prefix_<port> when the guest dials that port.
	c, err := net.Dial("unix", UnixPortPath(prefix, PortGateway))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := Accept(t.Context(), ln)
	if err != nil {
		t.Fatal(err)
	}
	got.Close()
	if _, err := h.Dial(t.Context(), 5); !errors.Is(err, ErrNoHostDial) {
		t.Fatalf("dial over unix ports: %v", err)
	}
}

// TestSerialGreetsAgainAGuestThatMissedIt plays a restored guest that lost the host
// end's greeting (it was frozen just as it read its port's end, and the greeting
// went with its old session): once the guest is let run (Attach), a connection on
// which the guest says nothing is dropped and the guest greeted again; a guest that
// answers is left alone, and so is a booting guest nobody has let run yet.
func TestSerialGreetsAgainAGuestThatMissedIt(t *testing.T) {
	old := guestAnswerWait
	guestAnswerWait = 300 * time.Millisecond
	t.Cleanup(func() { guestAnswerWait = old })
	dir := shortDir(t)
	sock := filepath.Join(dir, "serial.sock")
	vmmEnd, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer vmmEnd.Close()
	conns := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := vmmEnd.Accept()
			if err != nil {
				close(conns)
				return
			}
			conns <- c
		}
	}()
	h := NewSerial(sock, nil)
	defer h.Close()
	next := func(within time.Duration) net.Conn {
		t.Helper()
		select {
		case c := <-conns:
			return c
		case <-time.After(within):
			return nil
		}
	}

	// The guest that lost the greeting: it reads and drops whatever comes.
	first := next(5 * time.Second)
	if first == nil {
		t.Fatal("the host end never connected")
	}
	defer first.Close()
	go func() { _, _ = io.Copy(io.Discard, first) }()
	// Before Attach the guest may still be booting: the host end waits.
	if c := next(4 * guestAnswerWait); c != nil {
		c.Close()
		t.Fatal("the host end reconnected to a guest nobody had let run yet")
	}
	h.Attach()
	second := next(4 * guestAnswerWait)
	if second == nil {
		t.Fatal("the host end did not greet again a guest that stayed silent after Attach")
	}
	defer second.Close()
	sess := guestSession(t, second)
	defer sess.Close()
	checkHostDial(t, h, sess, 1031)
	// The guest answered: its session stays.
	if c := next(4 * guestAnswerWait); c != nil {
		c.Close()
		t.Fatal("the host end dropped a guest that had answered")
	}
	if sess.IsClosed() {
		t.Fatal("the answering guest's session was closed")
	}
}
