package grpcopts

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/encoding"

	pb "github.com/openshell/openshell/api/openshellv1"
)

// A relay frame (RelayChunk of data plus a few bytes of protobuf framing) gets a
// buffer from the tier just above RelayChunk, not the 1 MiB one that is cleared
// whole on every reuse.
func TestRelayFrameTier(t *testing.T) {
	for _, size := range []int{RelayChunk + 4, RelayChunk + 512} {
		b := framePool.Get(size)
		if len(*b) != size {
			t.Fatalf("Get(%d) returned %d bytes", size, len(*b))
		}
		if c := cap(*b); c > RelayChunk+1<<10 {
			t.Fatalf("Get(%d) returned a buffer of capacity %d; want the relay tier (%d)", size, c, RelayChunk+1<<10)
		}
		framePool.Put(b)
	}
	// Larger messages still work (next tier or a plain allocation).
	b := framePool.Get(3 << 20)
	if len(*b) != 3<<20 {
		t.Fatalf("Get(3 MiB) returned %d bytes", len(*b))
	}
}

// The registered "proto" codec is this package's, and it round-trips a relay
// frame through pooled buffers.
func TestCodecRegistered(t *testing.T) {
	c := encoding.GetCodecV2("proto")
	if _, ok := c.(codec); !ok {
		t.Fatalf(`the "proto" codec is %T, not this package's`, c)
	}
	data := make([]byte, RelayChunk)
	for i := range data {
		data[i] = byte(i * 7)
	}
	in := &pb.RelayFrame{Payload: &pb.RelayFrame_Data{Data: data}}
	for range 3 { // reuse pooled buffers: stale bytes must not leak into the result
		enc, err := c.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		var out pb.RelayFrame
		if err := c.Unmarshal(enc, &out); err != nil {
			t.Fatal(err)
		}
		enc.Free()
		if !bytes.Equal(out.GetData(), data) {
			t.Fatalf("round trip changed the %d-byte frame", len(data))
		}
		data = data[:len(data)-1000]
		in.Payload = &pb.RelayFrame_Data{Data: data}
	}
	if _, err := c.Marshal("not a message"); err == nil {
		t.Fatal("marshalling a string succeeded")
	}
}
