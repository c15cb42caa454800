package hub

import (
	"io"
	"testing"
	"time"
)

// The hub tests force an order of events between goroutines; each wait is bounded
// so that a wrong order fails the test instead of hanging it.

func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: not within 5 s", what)
	}
}

// waitReturned waits for the error of a call run in a goroutine (ServeBulk, Pump),
// which must be nil and come within 5 s.
func waitReturned(t *testing.T, ch <-chan error, what string) {
	t.Helper()
	select {
	case err := <-ch:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s did not return within 5 s", what)
	}
}

// waitWritesRefused writes to w until a write fails: the side behind it has taken in
// that the far end reads no more. Writes still accepted after 5 s fail the test.
func waitWritesRefused(t *testing.T, w io.Writer, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := w.Write([]byte("x")); err != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: writes still accepted after 5 s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
