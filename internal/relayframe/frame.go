// Package relayframe frames the relays that carry one job each straight over a
// RelayStream (a file transfer, an exec): a relay is one byte stream with no message
// boundaries and no half-close of its own, so each side sends frames of a kind byte,
// a 4-byte big-endian payload length and the payload.
package relayframe

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// HeaderLen is the size of a frame header.
const HeaderLen = 5

// MaxFrame is the largest payload a reader accepts and a writer sends.
const MaxFrame = 1 << 20

// AppendHeader appends the header of a frame of kind with an n-byte payload.
func AppendHeader(b []byte, kind byte, n int) []byte {
	return binary.BigEndian.AppendUint32(append(b, kind), uint32(n))
}

// ReadHeader reads one frame header. A stream that ends before the header is
// io.EOF; one that ends inside it io.ErrUnexpectedEOF.
func ReadHeader(r io.Reader) (kind byte, n uint32, err error) {
	var h [HeaderLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, 0, err
	}
	return h[0], binary.BigEndian.Uint32(h[1:]), nil
}

// Writer sends frames on w; it is safe for concurrent use, and each frame leaves
// in one Write, so frames of concurrent writers never interleave.
type Writer struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
}

// NewWriter returns a Writer on w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Frame sends p as one or more frames of kind, each at most MaxFrame bytes; an
// empty p sends one empty frame.
func (w *Writer) Frame(kind byte, p []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for first := true; first || len(p) > 0; first = false {
		n := min(len(p), MaxFrame)
		w.buf = append(AppendHeader(w.buf[:0], kind, n), p[:n]...)
		if _, err := w.w.Write(w.buf); err != nil {
			return err
		}
		p = p[n:]
	}
	if cap(w.buf) > 64<<10 {
		w.buf = nil // do not keep a large frame's buffer for small ones
	}
	return nil
}

// KindWriter is an io.Writer whose writes become frames of one kind.
type KindWriter struct {
	W    *Writer
	Kind byte
}

func (k KindWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if err := k.W.Frame(k.Kind, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Reader reads whole frames.
type Reader struct {
	r   *bufio.Reader
	buf []byte
}

// NewReader returns a Reader on r.
func NewReader(r io.Reader) *Reader { return &Reader{r: bufio.NewReaderSize(r, 64<<10)} }

// ErrTooLarge is wrapped by Next for a frame over its limit.
var ErrTooLarge = errors.New("frame over the size limit")

// Next reads the next frame, refusing (without reading it) a payload over max
// bytes. The payload is valid until the next call. io.EOF means the stream ended
// between frames; an end inside a frame is io.ErrUnexpectedEOF.
func (r *Reader) Next(max int) (kind byte, payload []byte, err error) {
	kind, n, err := ReadHeader(r.r)
	if err != nil {
		return 0, nil, err
	}
	if uint64(n) > uint64(max) {
		return kind, nil, fmt.Errorf("frame %q of %d bytes: %w of %d bytes", kind, n, ErrTooLarge, max)
	}
	if cap(r.buf) < int(n) {
		r.buf = make([]byte, n)
	}
	r.buf = r.buf[:n]
	if _, err := io.ReadFull(r.r, r.buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return kind, nil, err
	}
	return kind, r.buf, nil
}

// Peek returns the next n bytes without consuming them (a client looks at what
// answered the relay before reading frames).
func (r *Reader) Peek(n int) ([]byte, error) { return r.r.Peek(n) }
