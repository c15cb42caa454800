// Package streamconn presents a gRPC stream of byte frames (ForwardTcp, RelayStream)
// as a net.Conn, so that an SSH client or server runs directly over it: no socket
// and no copy goroutines in between.
//
// Writes are coalesced: Write only queues bytes, and one sender goroutine sends
// whatever has queued as frames of up to Chunk bytes. SSH writes one packet (at most
// ~32 KiB) per Write; sending each as its own message would multiply the per-message
// costs along the whole relay path. The queue is bounded (Queue), so a slow peer
// pushes back on the writer.
package streamconn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/openshell/openshell/internal/grpcopts"
)

const (
	// Chunk is the largest frame sent.
	Chunk = grpcopts.RelayChunk
	// Queue bounds the queued bytes: a writer blocks beyond it.
	Queue = 1 << 20
	// closeWait is how long Close lets queued bytes leave: a peer that stopped
	// reading must not hold Close up.
	closeWait = 2 * time.Second
	// closeWriteWait bounds CloseWrite, which waits for the queue to drain.
	closeWriteWait = time.Minute
)

// Stream is what a Conn needs of a bidirectional stream of byte frames.
type Stream interface {
	// Send sends p as one frame; p is not kept after Send returns.
	Send(p []byte) error
	// Recv returns the next frame's bytes (possibly none), or io.EOF once the peer
	// has half-closed.
	Recv() ([]byte, error)
	// CloseSend half-closes: the peer reads EOF after the frames sent.
	CloseSend() error
}

// Bidi adapts a gRPC bidi client stream whose messages carry bytes: wrap makes a
// data message, data returns a message's bytes (none for other kinds of message).
func Bidi[M any](s grpc.BidiStreamingClient[M, M], wrap func([]byte) *M, data func(*M) []byte) Stream {
	return bidi[M]{s: s, wrap: wrap, data: data}
}

type bidi[M any] struct {
	s    grpc.BidiStreamingClient[M, M]
	wrap func([]byte) *M
	data func(*M) []byte
}

// Send: grpc marshals before Send returns (no stats handler keeps the message), so
// the caller may reuse p afterwards.
func (b bidi[M]) Send(p []byte) error { return b.s.Send(b.wrap(p)) }
func (b bidi[M]) CloseSend() error    { return b.s.CloseSend() }
func (b bidi[M]) Recv() ([]byte, error) {
	m, err := b.s.Recv()
	if err != nil {
		return nil, err
	}
	return b.data(m), nil
}

// Conn is a Stream as a net.Conn. Read and Write may run concurrently; Close
// half-closes the stream after the queued bytes (waiting at most 2 s), then cancels
// it. Deadlines are not supported (the Set*Deadline methods do nothing): end the
// stream's context instead.
type Conn struct {
	s      Stream
	cancel context.CancelFunc
	name   string

	rmu sync.Mutex
	buf []byte // received bytes not yet read

	wmu     sync.Mutex
	wcond   sync.Cond // pending changed, or closing/werr set
	pending []byte
	closing bool  // no more writes: the sender flushes, then half-closes
	werr    error // the sender failed; writes fail with it
	sent    chan struct{}
	stopCtx func() bool
	once    sync.Once
}

var _ net.Conn = (*Conn)(nil)

// New returns s as a net.Conn and starts its sender. ctx is the stream's context:
// when it ends, the sender stops. cancel cancels that context; Close calls it, which
// also ends a Read blocked in Recv. name is what LocalAddr and RemoteAddr report
// (logs show it).
func New(ctx context.Context, s Stream, cancel context.CancelFunc, name string) *Conn {
	c := &Conn{s: s, cancel: cancel, name: name, sent: make(chan struct{})}
	c.wcond.L = &c.wmu
	// A cancelled stream ends the sender even if nobody closes the conn.
	c.stopCtx = context.AfterFunc(ctx, func() {
		c.wmu.Lock()
		c.closing = true
		c.wmu.Unlock()
		c.wcond.Broadcast()
	})
	go c.sender()
	return c
}

// sender sends what Write queued, in frames of up to Chunk, until the conn closes.
// Two buffers alternate: Write fills one while the other is being sent.
func (c *Conn) sender() {
	defer close(c.sent)
	var spare []byte
	for {
		c.wmu.Lock()
		for len(c.pending) == 0 && !c.closing {
			c.wcond.Wait()
		}
		if len(c.pending) == 0 {
			c.wmu.Unlock()
			_ = c.s.CloseSend()
			return
		}
		batch := c.pending
		c.pending = spare[:0]
		c.wmu.Unlock()
		c.wcond.Broadcast()
		for off := 0; off < len(batch); off += Chunk {
			if err := c.s.Send(batch[off:min(len(batch), off+Chunk)]); err != nil {
				c.wmu.Lock()
				c.werr = err
				c.pending = nil
				c.wmu.Unlock()
				c.wcond.Broadcast()
				return
			}
		}
		spare = batch
	}
}

// Read returns received bytes; a frame larger than p is returned over several
// Reads. It returns io.EOF once the peer has half-closed, and the stream's error
// (a gRPC status) when it fails.
func (c *Conn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for len(c.buf) == 0 {
		b, err := c.s.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return 0, io.EOF
			}
			return 0, err
		}
		c.buf = b
	}
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	return n, nil
}

// Write queues p for the sender. It blocks while Queue bytes are waiting, and fails
// with the sender's error once a Send failed, or net.ErrClosed after Close or
// CloseWrite.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	written := 0
	for len(p) > 0 {
		for len(c.pending) >= Queue && c.werr == nil && !c.closing {
			c.wcond.Wait()
		}
		if c.werr != nil {
			return written, c.werr
		}
		if c.closing {
			return written, net.ErrClosed
		}
		n := min(len(p), Queue-len(c.pending))
		c.pending = append(c.pending, p[:n]...)
		p, written = p[n:], written+n
		c.wcond.Broadcast()
	}
	return written, nil
}

// finish stops writes and waits (at most wait) for the queued bytes to be sent and
// the stream half-closed.
func (c *Conn) finish(wait time.Duration) error {
	c.wmu.Lock()
	c.closing = true
	c.wmu.Unlock()
	c.wcond.Broadcast()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-c.sent:
	case <-t.C:
		return fmt.Errorf("%s: queued data not sent within %v (the peer stopped reading)", c.name, wait)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.werr
}

// CloseWrite half-closes: the peer reads EOF after the queued bytes. Reads go on.
func (c *Conn) CloseWrite() error { return c.finish(closeWriteWait) }

// Close ends the conn: queued bytes get a moment to leave, then the stream is
// cancelled and the sender has stopped. It always returns nil.
func (c *Conn) Close() error {
	c.once.Do(func() {
		_ = c.finish(closeWait)
		c.stopCtx()
		c.cancel()
		// A cancelled stream fails the Send the sender may still be blocked in, so
		// it is gone when Close returns; the bound guards a Stream not tied to ctx.
		t := time.NewTimer(closeWait)
		defer t.Stop()
		select {
		case <-c.sent:
		case <-t.C:
		}
	})
	return nil
}

// Addr is a Conn's address: the name given to New.
type Addr string

func (a Addr) Network() string { return string(a) }
func (a Addr) String() string  { return string(a) }

func (c *Conn) LocalAddr() net.Addr              { return Addr(c.name) }
func (c *Conn) RemoteAddr() net.Addr             { return Addr(c.name) }
func (c *Conn) SetDeadline(time.Time) error      { return nil }
func (c *Conn) SetReadDeadline(time.Time) error  { return nil }
func (c *Conn) SetWriteDeadline(time.Time) error { return nil }
