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

// Frames handed over with WriteOwned come out of ReadChunk as the same slices (no
// copy), small writes are gathered, a chunk larger than the limit is split, and the
// bytes arrive in order; EOF follows a half-close once everything is read.
func TestBufPipeChunksPassThrough(t *testing.T) {
	a, b := bufPipe()
	big := make([]byte, 200<<10)
	rand.Read(big)
	huge := make([]byte, 300<<10)
	rand.Read(huge)
	var want bytes.Buffer
	if err := a.WriteOwned(big); err != nil {
		t.Fatal(err)
	}
	want.Write(big)
	for i := range 10 {
		p := []byte{byte(i), byte(i), byte(i)}
		if _, err := a.Write(p); err != nil {
			t.Fatal(err)
		}
		p[0] = 0xff // the caller reuses its buffer: the pipe holds a copy
		want.Write([]byte{byte(i), byte(i), byte(i)})
	}
	if err := a.WriteOwned(huge); err != nil {
		t.Fatal(err)
	}
	want.Write(huge)
	a.CloseWrite()

	var got bytes.Buffer
	var chunks [][]byte
	for {
		d, err := b.ReadChunk(ChunkSize)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(d) == 0 || len(d) > ChunkSize {
			t.Fatalf("ReadChunk returned %d bytes (limit %d)", len(d), ChunkSize)
		}
		chunks = append(chunks, d)
		got.Write(d)
	}
	if !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Fatalf("got %d bytes, not the %d written (or reordered)", got.Len(), want.Len())
	}
	if &chunks[0][0] != &big[0] || len(chunks[0]) != len(big) {
		t.Fatal("the first frame was copied, not passed through")
	}
	if len(chunks[1]) != 30 {
		t.Fatalf("the ten 3-byte writes came out as %d bytes, not gathered into one chunk of 30", len(chunks[1]))
	}
	if &chunks[2][0] != &huge[0] || len(chunks[2]) != ChunkSize || len(chunks[3]) != len(huge)-ChunkSize {
		t.Fatalf("a chunk over the limit was not split in place: %d, %d bytes", len(chunks[2]), len(chunks[3]))
	}
}

// WriteOwned waits while the pipe is full, and fails once the reader closes.
func TestBufPipeOwnedBackPressure(t *testing.T) {
	a, b := bufPipe()
	if err := a.WriteOwned(make([]byte, pipeMax)); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.WriteOwned([]byte("more")) }()
	select {
	case err := <-done:
		t.Fatalf("WriteOwned into a full pipe returned at once: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	if d, err := b.ReadChunk(ChunkSize); err != nil || len(d) != ChunkSize {
		t.Fatalf("ReadChunk = %d bytes, %v", len(d), err)
	}
	if err := <-done; err != nil {
		t.Fatalf("WriteOwned after room was freed: %v", err)
	}
	b.Close()
	if err := a.WriteOwned([]byte("x")); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("WriteOwned after the reader closed: %v, want ErrClosedPipe", err)
	}
	if _, err := b.ReadChunk(ChunkSize); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("ReadChunk on a closed end: %v, want ErrClosedPipe", err)
	}
}
