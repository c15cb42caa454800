package grpcopts

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sync"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	pb "github.com/openshell/openshell/api/openshellv1"
)

// The gRPC protobuf codec takes its buffers from gRPC's default pool, which rounds
// a relay frame up to a 1 MiB buffer and clears all of it on every use. This codec
// is the same protobuf encoding with framePool. It replaces the "proto" codec in
// every binary that imports this package (registration is by name, at init).
func init() { encoding.RegisterCodecV2(codec{}) }

type codec struct{}

func (codec) Name() string { return "proto" }

func (codec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("grpc codec: cannot marshal %T: not a protobuf message", v)
	}
	size := proto.Size(m)
	opts := proto.MarshalOptions{UseCachedSize: true} // safe: Size just ran
	if mem.IsBelowBufferPoolingThreshold(size) {
		b, err := opts.Marshal(m)
		if err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	buf := framePool.Get(size)
	if _, err := opts.MarshalAppend((*buf)[:0], m); err != nil {
		framePool.Put(buf)
		return nil, err
	}
	return mem.BufferSlice{mem.NewBuffer(buf, framePool)}, nil
}

func (codec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("grpc codec: cannot unmarshal into %T: not a protobuf message", v)
	}
	// Relay data frames, the bulk of every transfer, are decoded with one copy
	// instead of two (gather into a buffer, then copy the bytes field out of it).
	switch f := v.(type) {
	case *pb.RelayFrame:
		if d, ok := dataField(data); ok {
			f.Reset()
			f.Payload = &pb.RelayFrame_Data{Data: d}
			return nil
		}
	case *pb.TcpForwardFrame:
		if d, ok := dataField(data); ok {
			f.Reset()
			f.Payload = &pb.TcpForwardFrame_Data{Data: d}
			return nil
		}
	}
	buf := data.MaterializeToBuffer(framePool)
	defer buf.Free()
	return proto.Unmarshal(buf.ReadOnlyData(), m)
}

// dataFieldNumber is the number of the bytes field "data" in RelayFrame and
// TcpForwardFrame (the oneof's other member, init, is field 1).
const dataFieldNumber = 2

// dataField returns the payload of a message that consists of exactly one field
// 2 of wire type bytes, copied once out of the gRPC buffers; ok is false for
// anything else (which the protobuf decoder then handles).
func dataField(data mem.BufferSlice) ([]byte, bool) {
	var head [binary.MaxVarintLen64 + 1]byte
	n := 0
	for _, b := range data {
		n += copy(head[n:], b.ReadOnlyData())
		if n == len(head) {
			break
		}
	}
	num, typ, tagLen := protowire.ConsumeTag(head[:n])
	if tagLen < 0 || num != dataFieldNumber || typ != protowire.BytesType {
		return nil, false
	}
	size, sizeLen := protowire.ConsumeVarint(head[tagLen:n])
	skip := tagLen + sizeLen
	if sizeLen < 0 || uint64(data.Len()-skip) != size {
		return nil, false
	}
	parts := make([][]byte, 0, len(data))
	for _, b := range data {
		p := b.ReadOnlyData()
		if skip > 0 {
			k := min(skip, len(p))
			p, skip = p[k:], skip-k
		}
		if len(p) > 0 {
			parts = append(parts, p)
		}
	}
	// bytes.Join allocates without clearing and copies each part once.
	return bytes.Join(parts, nil), true
}

// sizedPool is a mem.BufferPool with one sync.Pool per size class. Buffers are not
// cleared: every user fills the length it asked for (a marshal writes the whole
// message, a read fills the frame) and never looks past it.
type sizedPool struct {
	classes []int
	pools   []sync.Pool
}

func newSizedPool(classes ...int) *sizedPool {
	return &sizedPool{classes: classes, pools: make([]sync.Pool, len(classes))}
}

func (p *sizedPool) Get(n int) *[]byte {
	for i, c := range p.classes {
		if n <= c {
			if b, ok := p.pools[i].Get().(*[]byte); ok {
				*b = (*b)[:n]
				return b
			}
			b := make([]byte, n, c)
			return &b
		}
	}
	b := make([]byte, n)
	return &b
}

func (p *sizedPool) Put(b *[]byte) {
	c := cap(*b)
	for i, cl := range p.classes {
		if c == cl {
			p.pools[i].Put(b)
			return
		}
	}
}
