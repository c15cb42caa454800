package hub

import (
	"bytes"
	"io"
	"sync"
	"testing"
	"time"
)

// refusalSpy is a relay Conn that tells when a write into it was refused.
type refusalSpy struct {
	Conn
	refused chan struct{}
	once    sync.Once
}

func (s *refusalSpy) WriteOwned(p []byte) error {
	err := s.Conn.WriteOwned(p)
	if err != nil {
		s.once.Do(func() { close(s.refused) })
	}
	return err
}

// TestPumpKeepsRelayBytesAfterWriteFails: the relay's far end (a supervisor whose
// upload failed) sent its output and exit frame and stopped reading while the
// caller's bytes were still coming. Handing the caller's next frame to the relay
// fails; the far end's bytes, queued but not yet sent, must still go out to the
// caller, then Pump ends with the relay.
func TestPumpKeepsRelayBytesAfterWriteFails(t *testing.T) {
	near, far := bufPipe()
	conn := &refusalSpy{Conn: &relayConn{pipeEnd: near, release: func() {}}, refused: make(chan struct{})}
	gate, sending := make(chan struct{}), make(chan struct{}, 1)
	var got bytes.Buffer // written by Pump's goroutine only, read after it returned
	send := func(d []byte) error {
		select {
		case sending <- struct{}{}:
		default:
		}
		<-gate
		got.Write(d)
		return nil
	}
	frames, callEnded := make(chan []byte), make(chan struct{})
	defer close(callEnded)
	recv := func() ([]byte, error) {
		select {
		case d := <-frames:
			return d, nil
		case <-callEnded:
			return nil, io.EOF
		}
	}
	pumped := make(chan error, 1)
	go func() { pumped <- Pump(t.Context(), conn, recv, send) }()

	if _, err := far.Write([]byte("output ")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, sending, "the far end's first bytes were not sent")
	// While the first bytes are being sent, the far end sends its last and stops
	// reading; then the caller's next frame arrives.
	if _, err := far.Write([]byte("exit")); err != nil {
		t.Fatal(err)
	}
	_ = far.CloseWrite()
	_ = far.CloseRead()
	frames <- []byte("more tar data")
	waitFor(t, conn.refused, "the caller's frame was not handed to the relay")
	// Before the fix the refusal closed the relay at once; give such a close time to
	// land before the queued bytes are sent.
	time.Sleep(20 * time.Millisecond)
	close(gate)
	waitReturned(t, pumped, "Pump, after the relay ended,")
	if got.String() != "output exit" {
		t.Fatalf("the caller got %q; want the far end's %q", got.String(), "output exit")
	}
}
