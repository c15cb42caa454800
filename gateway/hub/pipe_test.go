package hub

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"testing"
	"time"
)

// TestBufPipeCoalescesAndDelivers writes many small packets into one end and reads
// them from the other with a large buffer: every byte arrives in order, and reads
// take several writes at once (what makes relay frames large).
func TestBufPipeCoalescesAndDelivers(t *testing.T) {
	a, b := bufPipe()
	want := make([]byte, 3<<20)
	if _, err := rand.Read(want); err != nil {
		t.Fatal(err)
	}
	go func() {
		for off := 0; off < len(want); off += 32 << 10 {
			if _, err := a.Write(want[off:min(len(want), off+32<<10)]); err != nil {
				t.Errorf("write: %v", err)
				return
			}
		}
		_ = a.CloseWrite()
	}()
	time.Sleep(50 * time.Millisecond) // let writes queue up to the limit
	var got bytes.Buffer
	buf := make([]byte, ChunkSize)
	biggest := 0
	for {
		n, err := b.Read(buf)
		got.Write(buf[:n])
		biggest = max(biggest, n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("got %d bytes, not the %d written (or reordered)", got.Len(), len(want))
	}
	if biggest <= 32<<10 {
		t.Fatalf("largest read %d bytes: writes were not coalesced", biggest)
	}
	// The half-closed end still carries the other direction.
	go func() { _, _ = b.Write([]byte("back")) }()
	back := make([]byte, 4)
	if _, err := io.ReadFull(a, back); err != nil || string(back) != "back" {
		t.Fatalf("reverse direction after half-close: %q %v", back, err)
	}
}

// TestBufPipeCloseUnblocks: closing one end fails the other's blocked writer and
// gives its reader EOF; the closed end's own reads fail.
func TestBufPipeCloseUnblocks(t *testing.T) {
	a, b := bufPipe()
	errc := make(chan error, 1)
	go func() {
		_, err := b.Write(make([]byte, 2*pipeMax)) // more than the buffer holds
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond)
	a.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, io.ErrClosedPipe) {
			t.Fatalf("blocked write after peer close: %v, want ErrClosedPipe", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("blocked writer not released by the peer's Close")
	}
	if _, err := b.Read(make([]byte, 8)); !errors.Is(err, io.EOF) {
		t.Fatalf("read after peer close: %v, want EOF", err)
	}
	if _, err := a.Read(make([]byte, 8)); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("read on a closed end: %v, want ErrClosedPipe", err)
	}
}
