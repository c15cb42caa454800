package hub

import (
	"io"
	"sync"
)

// pipeMax bounds the bytes buffered in one direction of a relay pipe: enough for a
// few full frames, small enough that a stalled reader pushes back on its writer.
const pipeMax = 1 << 20

// half is one direction of a relay pipe. Unlike net.Pipe it buffers: a writer does
// not wait for a reader, and a reader takes everything written so far in one Read,
// so many small writes (SSH packets) leave as one large frame. Data sits in a queue
// of chunks: frames received from a stream are queued as they are (WriteOwned) and
// handed on as they are (ReadChunk), so bulk transfers cross the gateway without
// being copied into and out of a buffer.
type half struct {
	mu       sync.Mutex
	readable sync.Cond // data arrived or an end closed
	writable sync.Cond // room freed or an end closed
	chunks   [][]byte  // oldest first; chunks[0][off:] is read next
	off      int
	queued   int  // bytes in chunks not yet read
	tailOwn  bool // the last chunk is the pipe's own copy buffer (write may append to it)
	wclosed  bool // writer closed: reader sees EOF once drained
	rclosed  bool // reader closed: writes fail
}

// copyBuf is the size of the buffers write copies small writes into.
const copyBuf = 64 << 10

func newHalf() *half {
	h := &half{}
	h.readable.L, h.writable.L = &h.mu, &h.mu
	return h
}

// waitRoom waits until the queue has room. h.mu held.
func (h *half) waitRoom() error {
	for h.queued >= pipeMax && !h.rclosed && !h.wclosed {
		h.writable.Wait()
	}
	if h.rclosed || h.wclosed {
		return io.ErrClosedPipe
	}
	return nil
}

// write queues a copy of p (the caller may reuse p).
func (h *half) write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	written := 0
	for len(p) > 0 {
		if err := h.waitRoom(); err != nil {
			return written, err
		}
		n := min(len(p), pipeMax-h.queued)
		last := len(h.chunks) - 1
		if h.tailOwn && last >= 0 && cap(h.chunks[last])-len(h.chunks[last]) >= n {
			h.chunks[last] = append(h.chunks[last], p[:n]...)
		} else {
			b := make([]byte, n, max(n, copyBuf))
			copy(b, p)
			h.chunks = append(h.chunks, b)
			h.tailOwn = true
		}
		h.queued += n
		p, written = p[n:], written+n
		h.readable.Signal()
	}
	return written, nil
}

// writeOwned queues p itself: the caller hands it over and must not touch it again.
func (h *half) writeOwned(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.waitRoom(); err != nil {
		return err
	}
	h.chunks = append(h.chunks, p)
	h.tailOwn = false
	h.queued += len(p)
	h.readable.Signal()
	return nil
}

// waitData waits until there is something to read. h.mu held.
func (h *half) waitData() error {
	for h.queued == 0 && !h.wclosed && !h.rclosed {
		h.readable.Wait()
	}
	if h.rclosed {
		return io.ErrClosedPipe
	}
	if h.queued == 0 {
		return io.EOF
	}
	return nil
}

// consume drops n bytes from the front of the queue. h.mu held.
func (h *half) consume(n int) {
	h.queued -= n
	for n > 0 {
		rest := len(h.chunks[0]) - h.off
		if n < rest {
			h.off += n
			break
		}
		n -= rest
		h.chunks[0] = nil
		h.chunks, h.off = h.chunks[1:], 0
	}
	if len(h.chunks) == 0 {
		h.chunks, h.tailOwn = nil, false
	}
	h.writable.Signal()
}

func (h *half) read(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.waitData(); err != nil {
		return 0, err
	}
	n, off := 0, h.off
	for i := 0; i < len(h.chunks) && n < len(p); i++ {
		n += copy(p[n:], h.chunks[i][off:])
		off = 0
	}
	h.consume(n)
	return n, nil
}

// readChunk returns up to limit queued bytes as one slice the caller may keep (the
// pipe no longer refers to it): the front chunk itself when it is large, else the
// small chunks gathered into one.
func (h *half) readChunk(limit int) ([]byte, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.waitData(); err != nil {
		return nil, err
	}
	front := h.chunks[0][h.off:]
	if len(front) >= limit || len(front) >= copyBuf || len(h.chunks) == 1 {
		// The front chunk alone. Capped at its length, so that a write appending
		// to the pipe's own tail buffer lands past the bytes handed out.
		n := min(len(front), limit)
		front = front[:n:n]
		h.consume(n)
		return front, nil
	}
	// Gather the run of small chunks at the front; a large one after them is left
	// for the next call, to be handed on whole.
	n, off := 0, h.off
	for i := 0; i < len(h.chunks) && n < limit; i++ {
		c := len(h.chunks[i]) - off
		if i > 0 && c >= copyBuf {
			break
		}
		n += min(c, limit-n)
		off = 0
	}
	out := make([]byte, 0, n)
	off = h.off
	for i := 0; len(out) < n; i++ {
		c := h.chunks[i][off:]
		out = append(out, c[:min(len(c), n-len(out))]...)
		off = 0
	}
	h.consume(len(out))
	return out, nil
}

func (h *half) closeWrite() {
	h.mu.Lock()
	h.wclosed = true
	h.mu.Unlock()
	h.readable.Broadcast()
	h.writable.Broadcast()
}

func (h *half) closeRead() {
	h.mu.Lock()
	h.rclosed = true
	h.mu.Unlock()
	h.readable.Broadcast()
	h.writable.Broadcast()
}

// pipeEnd is one end of a buffered in-memory duplex pipe.
type pipeEnd struct {
	r, w *half
	once sync.Once
}

// bufPipe returns the two ends of a buffered duplex pipe. Closing an end makes the
// other end's reads return EOF once it has read what was written, and its writes fail.
func bufPipe() (*pipeEnd, *pipeEnd) {
	ab, ba := newHalf(), newHalf()
	return &pipeEnd{r: ba, w: ab}, &pipeEnd{r: ab, w: ba}
}

func (e *pipeEnd) Read(p []byte) (int, error)  { return e.r.read(p) }
func (e *pipeEnd) Write(p []byte) (int, error) { return e.w.write(p) }

// WriteOwned queues p without copying it; the caller must not touch p again.
func (e *pipeEnd) WriteOwned(p []byte) error { return e.w.writeOwned(p) }

// ReadChunk returns up to limit bytes in one slice the caller keeps (see
// half.readChunk); io.EOF once the other end closed its writing and all is read.
func (e *pipeEnd) ReadChunk(limit int) ([]byte, error) { return e.r.readChunk(limit) }

// CloseWrite half-closes: the other end reads EOF after the buffered bytes.
func (e *pipeEnd) CloseWrite() error { e.w.closeWrite(); return nil }

// CloseRead stops reading: the other end's writes fail, and what it wrote but this
// end did not read is dropped. Reading the other way goes on.
func (e *pipeEnd) CloseRead() error { e.r.closeRead(); return nil }

func (e *pipeEnd) Close() error {
	e.once.Do(func() {
		e.w.closeWrite()
		e.r.closeRead()
	})
	return nil
}

var _ io.ReadWriteCloser = (*pipeEnd)(nil)
