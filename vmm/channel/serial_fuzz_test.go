package channel

import (
	"bytes"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/openshell/openshell/guest/channel/wire"
)

// blockReader blocks every Read until closed, like a quiet peer.
type blockReader struct{ done chan struct{} }

func (b blockReader) Read([]byte) (int, error) { <-b.done; return 0, io.EOF }

// guestBytes records what a guest's multiplexer writes to the serial port when it
// opens streams to ports, sends payload on each and closes them.
func guestBytes(t testing.TB, ports []uint32, payload string) []byte {
	var (
		mu  sync.Mutex
		buf bytes.Buffer
	)
	done := make(chan struct{})
	var once sync.Once
	w := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return buf.Write(p) })
	sess, err := yamux.Client(struct {
		io.Reader
		io.Writer
		io.Closer
	}{blockReader{done}, w, closerFunc(func() error { once.Do(func() { close(done) }); return nil })}, yamuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ports {
		st, err := sess.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		wire.WriteHeader(st, p)
		io.WriteString(st, payload)
		st.Close()
	}
	time.Sleep(20 * time.Millisecond)
	sess.Close()
	mu.Lock()
	defer mu.Unlock()
	return bytes.Clone(buf.Bytes())
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// FuzzSerialFromGuest feeds what a guest writes to the virtio-serial port (the
// stream multiplexer's frames and, in each stream, the port header) to the host end
// the runner uses. Whatever the bytes: no panic, the host's session ends when the
// input does (no goroutine left waiting on it), and a stream reaches a port's
// listener only with a valid header naming that port: its first bytes are the
// payload, never the header.
func FuzzSerialFromGuest(f *testing.F) {
	f.Add(guestBytes(f, []uint32{PortBootstrap}, "hello"))
	f.Add(guestBytes(f, []uint32{PortGateway, PortEgress, 4242}, "OSI1"))
	f.Add(guestBytes(f, []uint32{PortBootstrap, PortBootstrap}, ""))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, b := range feedSerial(t, in, 0) {
			if bytes.HasPrefix(b, []byte("OSP1")) {
				t.Fatalf("a stream was delivered with its header unread: %q", b)
			}
		}
	})
}

// gatedReader reads r, then holds its EOF until gate closes: the end of a serial port's
// input ends the host's session, and streams it had not accepted yet die with it.
type gatedReader struct {
	r    *bytes.Reader
	gate <-chan struct{}
}

func (g gatedReader) Read(p []byte) (int, error) {
	n, err := g.r.Read(p)
	if err == io.EOF && n == 0 {
		<-g.gate
	}
	return n, err
}

// feedSerial runs the host end's session over in (the guest's bytes) and returns the
// first bytes of every stream delivered to the bootstrap port. The input ends once
// want streams were delivered (at most 5 s later): a test that knows how many streams
// the input holds sees them all, a fuzz input (want 0) ends at once.
func feedSerial(t *testing.T, in []byte, want int) [][]byte {
	quiet := slog.New(slog.DiscardHandler)
	s := &serial{log: quiet, ports: wire.NewPorts("host"), done: make(chan struct{}), ready: make(chan struct{})}
	ln, err := s.ports.Listen(PortBootstrap)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	delivered := make(chan []byte, 64)
	accepting := make(chan struct{})
	var (
		readers   sync.WaitGroup
		gateOnce  sync.Once
		seen      atomic.Int32
		gate      = make(chan struct{})
		closeGate = func() { gateOnce.Do(func() { close(gate) }) }
	)
	if want == 0 {
		closeGate()
	}
	defer time.AfterFunc(5*time.Second, closeGate).Stop()
	go func() {
		defer close(accepting)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			readers.Add(1)
			go func() {
				defer readers.Done()
				defer c.Close()
				c.SetReadDeadline(time.Now().Add(time.Second))
				b := make([]byte, 4)
				n, _ := io.ReadFull(c, b)
				delivered <- b[:n]
				if int(seen.Add(1)) == want {
					closeGate()
				}
			}()
		}
	}()
	sess, err := yamux.Server(struct {
		io.Reader
		io.Writer
		io.Closer
	}{gatedReader{bytes.NewReader(in), gate}, io.Discard, io.NopCloser(nil)}, yamuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	ended := make(chan struct{})
	go func() { s.acceptLoop(sess); close(ended) }()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatalf("the host's session did not end with its input %q", in)
	}
	sess.Close()
	// Every stream the session accepted has been routed (delivered to the listener or
	// dropped) before the listener closes, and every delivered one read before the
	// results are collected: no timing decides what the test sees.
	s.routing.Wait()
	ln.Close()
	<-accepting
	readers.Wait()
	close(delivered)
	var out [][]byte
	for b := range delivered {
		out = append(out, b)
	}
	return out
}

// The harness sees real streams: a guest stream to the bootstrap port arrives with
// its payload; one to another port does not.
func TestFeedSerialDelivers(t *testing.T) {
	got := feedSerial(t, guestBytes(t, []uint32{PortBootstrap, 4242, PortBootstrap}, "hello"), 2)
	if len(got) != 2 || string(got[0]) != "hell" || string(got[1]) != "hell" {
		t.Fatalf("delivered %q; want two streams starting with the payload", got)
	}
}
