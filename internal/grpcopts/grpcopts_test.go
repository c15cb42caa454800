package grpcopts

import "testing"

// A relay frame (RelayChunk of data plus a few bytes of protobuf framing) gets a
// buffer from the tier just above RelayChunk, not the 1 MiB one that is cleared
// whole on every reuse.
func TestRelayFrameTier(t *testing.T) {
	for _, size := range []int{RelayChunk + 4, RelayChunk + 512} {
		b := bufferPool.Get(size)
		if len(*b) != size {
			t.Fatalf("Get(%d) returned %d bytes", size, len(*b))
		}
		if c := cap(*b); c > RelayChunk+1<<10 {
			t.Fatalf("Get(%d) returned a buffer of capacity %d; want the relay tier (%d)", size, c, RelayChunk+1<<10)
		}
		bufferPool.Put(b)
	}
	// Larger messages still work (next tier or a plain allocation).
	b := bufferPool.Get(3 << 20)
	if len(*b) != 3<<20 {
		t.Fatalf("Get(3 MiB) returned %d bytes", len(*b))
	}
}
