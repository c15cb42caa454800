package hub

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
)

// scriptedBulk is a supervisor's bulk stream whose order of events the test decides.
// Read hands out what the test sends on reads (EOF once reads is closed). Write fails
// with EPIPE when failWrites is set (the supervisor closed its end); otherwise it
// waits for writeGate, then keeps the bytes. Each ending is recorded.
type scriptedBulk struct {
	reads      chan []byte
	failWrites bool
	writeGate  chan struct{}
	writing    chan struct{} // a Write began (buffered: the first is kept)
	writeErr   chan struct{} // closed at the first failed Write

	mu        sync.Mutex
	written   bytes.Buffer
	closed    chan struct{}
	readDone  chan struct{} // CloseRead
	wroteEnd  bool          // CloseWrite
	closeOnce sync.Once
	readOnce  sync.Once
	errOnce   sync.Once
}

var _ BulkConn = (*scriptedBulk)(nil)

func newScriptedBulk() *scriptedBulk {
	return &scriptedBulk{reads: make(chan []byte), writeGate: make(chan struct{}), writing: make(chan struct{}, 1),
		writeErr: make(chan struct{}), closed: make(chan struct{}), readDone: make(chan struct{})}
}

func (s *scriptedBulk) Read(p []byte) (int, error) {
	select {
	case d, ok := <-s.reads:
		if !ok {
			return 0, io.EOF
		}
		return copy(p, d), nil
	case <-s.closed:
		return 0, net.ErrClosed
	}
}

func (s *scriptedBulk) Write(p []byte) (int, error) {
	select {
	case s.writing <- struct{}{}:
	default:
	}
	if s.failWrites {
		s.errOnce.Do(func() { close(s.writeErr) })
		return 0, syscall.EPIPE
	}
	select {
	case <-s.writeGate:
	case <-s.closed:
	}
	select {
	case <-s.closed:
		return 0, net.ErrClosed
	default:
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.written.Write(p)
}

func (s *scriptedBulk) CloseWrite() error {
	s.mu.Lock()
	s.wroteEnd = true
	s.mu.Unlock()
	return nil
}

func (s *scriptedBulk) CloseRead() error { s.readOnce.Do(func() { close(s.readDone) }); return nil }

func (s *scriptedBulk) Close() error { s.closeOnce.Do(func() { close(s.closed) }); return nil }

// serveBulk pairs sup with a relay asked of a supervisor instance, as OpenRelay
// would, and serves it; it returns the client's end of the relay and ServeBulk's
// result.
func serveBulk(t *testing.T, sup BulkConn) (*pipeEnd, <-chan error) {
	t.Helper()
	h := New(Options{Log: slog.New(slog.DiscardHandler)})
	sess := &session{sandboxID: "sb", instanceID: "inst", bound: &binding{instanceID: "inst", secret: secretSum("secret")}}
	p := &pendingRelay{sandboxID: "sb", sess: sess, result: make(chan pairResult, 1)}
	h.pending["ch"] = p
	served := make(chan error, 1)
	go func() {
		_, err := h.ServeBulk(sup, "ch", Instance{ID: "inst", Secret: "secret"},
			func(string) error { return nil }, func() error { return nil })
		served <- err
	}()
	select {
	case r := <-p.result:
		return r.conn, served
	case <-time.After(5 * time.Second):
		t.Fatal("the bulk stream did not pair within 5 s")
	}
	return nil, nil
}

// TestServeBulkKeepsSupervisorBytesAfterWriteFails: an upload's supervisor sent its
// exit frame (the upload's error) and closed its end while the client's bytes were
// still coming. Writing them fails; the exit frame, on its way in, must still reach
// the client, then the end. The client's further writes fail.
func TestServeBulkKeepsSupervisorBytesAfterWriteFails(t *testing.T) {
	sup := newScriptedBulk()
	sup.failWrites = true
	client, served := serveBulk(t, sup)
	defer client.Close()
	if _, err := client.Write([]byte("tar data")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, sup.writeErr, "the client's bytes were not written to the supervisor")
	// Wait until the failed write has been taken in (the client's writes fail), so
	// the exit frame arrives after it.
	waitWritesRefused(t, client, "the supervisor's end refused the client's bytes")
	exit := []byte(`x{"code":13,"error":"/sandbox/x is not writable"}`)
	sup.reads <- exit
	close(sup.reads)
	got, err := io.ReadAll(client)
	if err != nil || !bytes.Equal(got, exit) {
		t.Fatalf("the client read %q, %v; want the supervisor's exit frame %q, then EOF", got, err, exit)
	}
	waitReturned(t, served, "ServeBulk, after both directions ended,")
}

// TestServeBulkKeepsClientBytesAfterItStopsReading: the client sent its last bytes
// and closed its end while the supervisor was still writing to it. The supervisor's
// further writes fail (its reading side is closed), but the client's bytes still
// queued reach the supervisor, then the end.
func TestServeBulkKeepsClientBytesAfterItStopsReading(t *testing.T) {
	sup := newScriptedBulk()
	client, served := serveBulk(t, sup)
	if _, err := client.Write([]byte("first ")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, sup.writing, "the client's first bytes were not written to the supervisor")
	if _, err := client.Write([]byte("last")); err != nil {
		t.Fatal(err)
	}
	client.Close()
	sup.reads <- []byte("progress")
	// Wait until the hub has taken in that the client reads no more (it stops the
	// supervisor's reading side, or closed the stream before), so the supervisor
	// takes the client's bytes after it.
	select {
	case <-sup.readDone:
	case <-sup.closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the supervisor's bytes for a closed client were neither refused nor cut off within 5 s")
	}
	close(sup.writeGate)
	waitReturned(t, served, "ServeBulk, after both directions ended,")
	sup.mu.Lock()
	got, end := sup.written.String(), sup.wroteEnd
	sup.mu.Unlock()
	if got != "first last" || !end {
		t.Fatalf("the supervisor got %q (end sent: %v); want the client's %q, then the end", got, end, "first last")
	}
}
