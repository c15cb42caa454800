package mainproc

import (
	"bytes"
	"sync"
)

// ring keeps the last n bytes written, for replay to a client that attaches late.
type ring struct {
	buf  []byte
	size int
}

func (r *ring) write(p []byte) {
	if len(p) >= r.size {
		r.buf = append(r.buf[:0], p[len(p)-r.size:]...)
		return
	}
	if over := len(r.buf) + len(p) - r.size; over > 0 {
		r.buf = append(r.buf[:0], r.buf[over:]...)
	}
	r.buf = append(r.buf, p...)
}

// broadcaster fans output out to attached clients. A client too slow to keep up is
// dropped (its channel closed) rather than stalling the main process's output.
type broadcaster struct {
	mu     sync.Mutex
	replay ring
	subs   map[chan []byte]struct{}
	closed bool
}

func newBroadcaster(replay int) *broadcaster {
	return &broadcaster{replay: ring{size: replay}, subs: map[chan []byte]struct{}{}}
}

func (b *broadcaster) write(p []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.replay.write(p)
	for ch := range b.subs {
		select {
		case ch <- bytes.Clone(p):
		default:
			delete(b.subs, ch)
			close(ch)
		}
	}
}

func (b *broadcaster) subscribe() ([]byte, chan []byte, func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ch := make(chan []byte, 1024)
	replay := bytes.Clone(b.replay.buf)
	if b.closed {
		close(ch)
		return replay, ch, func() {}
	}
	b.subs[ch] = struct{}{}
	return replay, ch, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if _, ok := b.subs[ch]; ok {
			delete(b.subs, ch)
			close(ch)
		}
	}
}

func (b *broadcaster) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	for ch := range b.subs {
		delete(b.subs, ch)
		close(ch)
	}
}

// lineSplitter turns a byte stream into lines for the log shipper.
type lineSplitter struct {
	buf  []byte
	emit func(string)
}

const maxLine = 8 << 10

func (l *lineSplitter) write(p []byte) {
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			l.buf = append(l.buf, p...)
			if len(l.buf) >= maxLine {
				l.flush()
			}
			return
		}
		l.buf = append(l.buf, p[:i]...)
		p = p[i+1:]
		l.flush()
	}
}

func (l *lineSplitter) flush() {
	line := bytes.TrimRight(l.buf, "\r")
	if len(line) > 0 {
		l.emit(string(line))
	}
	l.buf = l.buf[:0]
}
