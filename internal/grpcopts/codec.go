package grpcopts

import (
	"fmt"
	"sync"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
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
	buf := data.MaterializeToBuffer(framePool)
	defer buf.Free()
	return proto.Unmarshal(buf.ReadOnlyData(), m)
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
