package grpcopts

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

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

// split cuts b into a BufferSlice at the given offsets, as gRPC hands over a
// message that arrived in several HTTP/2 frames.
func split(b []byte, cuts ...int) mem.BufferSlice {
	var out mem.BufferSlice
	prev := 0
	for _, c := range cuts {
		c = min(max(c, prev), len(b))
		out = append(out, mem.SliceBuffer(b[prev:c]))
		prev = c
	}
	return append(out, mem.SliceBuffer(b[prev:]))
}

// The data-frame fast path decodes exactly what the protobuf decoder does, whatever
// the size and however the message is split; other frames go to the decoder.
func TestDataFrameFastPath(t *testing.T) {
	c := codec{}
	for _, size := range []int{0, 1, 127, 128, 16383, 16384, 100_000, RelayChunk} {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(i*31 + size)
		}
		for _, in := range []proto.Message{
			&pb.RelayFrame{Payload: &pb.RelayFrame_Data{Data: data}},
			&pb.TcpForwardFrame{Payload: &pb.TcpForwardFrame_Data{Data: data}},
		} {
			wire, err := proto.Marshal(in)
			if err != nil {
				t.Fatal(err)
			}
			for _, cuts := range [][]int{nil, {1}, {2, 3}, {5, 16384, 16390}} {
				out := in.ProtoReflect().New().Interface()
				if err := c.Unmarshal(split(wire, cuts...), out); err != nil {
					t.Fatal(err)
				}
				if !proto.Equal(out, in) {
					t.Fatalf("%T of %d bytes split at %v decoded differently", in, size, cuts)
				}
			}
		}
	}
	// Not a lone data field: the protobuf decoder's result.
	init := &pb.RelayFrame{Payload: &pb.RelayFrame_Init{Init: &pb.RelayInit{ChannelId: "c1"}}}
	wire, _ := proto.Marshal(init)
	var out pb.RelayFrame
	if err := c.Unmarshal(split(wire, 1), &out); err != nil || !proto.Equal(&out, init) {
		t.Fatalf("init frame: %v %v", &out, err)
	}
	if _, ok := dataField(split([]byte{0x12, 0x05, 'a'})); ok {
		t.Fatal("a truncated data field was accepted")
	}
	if err := c.Unmarshal(split([]byte{0x12, 0x05, 'a'}), &out); err == nil {
		t.Fatal("a truncated frame decoded without error")
	}
}

// Whatever the bytes, the fast path never disagrees with the protobuf decoder.
func FuzzDataField(f *testing.F) {
	f.Add([]byte{0x12, 0x03, 'a', 'b', 'c'}, uint8(1))
	f.Add([]byte{0x0a, 0x02, 0x0a, 0x00}, uint8(2))
	f.Add([]byte{0x12, 0x80, 0x01}, uint8(0))
	f.Add([]byte{0x12, 0x00, 0x12, 0x00}, uint8(3))
	f.Fuzz(func(t *testing.T, b []byte, cut uint8) {
		d, ok := dataField(split(b, int(cut)))
		if !ok {
			return
		}
		var ref pb.RelayFrame
		if err := proto.Unmarshal(b, &ref); err != nil {
			t.Fatalf("fast path accepted %x, which the decoder refuses: %v", b, err)
		}
		if !bytes.Equal(ref.GetData(), d) || ref.GetInit() != nil {
			t.Fatalf("fast path decoded %x as %x, the decoder as %v", b, d, &ref)
		}
	})
}

// BenchmarkUnmarshalRelayFrame decodes a RelayChunk data frame that arrived in 16 KiB
// HTTP/2 frames: this codec's path against gRPC's protobuf codec.
func BenchmarkUnmarshalRelayFrame(b *testing.B) {
	wire, err := proto.Marshal(&pb.RelayFrame{Payload: &pb.RelayFrame_Data{Data: make([]byte, RelayChunk)}})
	if err != nil {
		b.Fatal(err)
	}
	var cuts []int
	for c := 16 << 10; c < len(wire); c += 16 << 10 {
		cuts = append(cuts, c)
	}
	data := split(wire, cuts...)
	for _, bc := range []struct {
		name string
		c    encoding.CodecV2
	}{{"openshell", codec{}}, {"grpc-default", grpcProtoCodec}} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(wire)))
			for range b.N {
				var f pb.RelayFrame
				if err := bc.c.Unmarshal(data, &f); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
