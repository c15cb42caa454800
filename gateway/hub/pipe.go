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
// so many small writes (SSH packets) leave as one large frame.
type half struct {
	mu       sync.Mutex
	readable sync.Cond // data arrived or an end closed
	writable sync.Cond // room freed or an end closed
	data     []byte
	off      int
	wclosed  bool // writer closed: reader sees EOF once drained
	rclosed  bool // reader closed: writes fail
}

func newHalf() *half {
	h := &half{data: make([]byte, 0, 64<<10)}
	h.readable.L, h.writable.L = &h.mu, &h.mu
	return h
}

func (h *half) write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	written := 0
	for len(p) > 0 {
		for len(h.data)-h.off >= pipeMax && !h.rclosed && !h.wclosed {
			h.writable.Wait()
		}
		if h.rclosed || h.wclosed {
			return written, io.ErrClosedPipe
		}
		if h.off > 0 && h.off == len(h.data) {
			h.data, h.off = h.data[:0], 0
		} else if h.off > 0 && h.off >= cap(h.data)/2 {
			n := copy(h.data, h.data[h.off:])
			h.data, h.off = h.data[:n], 0
		}
		n := min(len(p), pipeMax-(len(h.data)-h.off))
		h.data = append(h.data, p[:n]...)
		p, written = p[n:], written+n
		h.readable.Signal()
	}
	return written, nil
}

func (h *half) read(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for h.off == len(h.data) && !h.wclosed && !h.rclosed {
		h.readable.Wait()
	}
	if h.rclosed {
		return 0, io.ErrClosedPipe
	}
	if h.off == len(h.data) {
		return 0, io.EOF
	}
	n := copy(p, h.data[h.off:])
	h.off += n
	if h.off == len(h.data) {
		h.data, h.off = h.data[:0], 0
	}
	h.writable.Signal()
	return n, nil
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

// CloseWrite half-closes: the other end reads EOF after the buffered bytes.
func (e *pipeEnd) CloseWrite() error { e.w.closeWrite(); return nil }

func (e *pipeEnd) Close() error {
	e.once.Do(func() {
		e.w.closeWrite()
		e.r.closeRead()
	})
	return nil
}

var _ io.ReadWriteCloser = (*pipeEnd)(nil)
