package session

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"

	pb "github.com/openshell/openshell/api/openshellv1"
)

// Shipper batches sandbox log lines to the gateway with PushSandboxLogs. Lines wait
// in a bounded buffer across gateway outages; when it is full the oldest are dropped
// and a line saying how many is shipped in their place.
type Shipper struct {
	sandboxID string
	identity  *Identity
	push      func(ctx context.Context, opts ...grpc.CallOption) (grpc.ClientStreamingClient[pb.PushSandboxLogsRequest, pb.PushSandboxLogsResponse], error)
	max       int
	batch     int
	interval  time.Duration

	fmu sync.Mutex // one flush at a time, so no batch is sent twice
	mu  sync.Mutex
	buf []*pb.SandboxLogLine
	// dropped counts lines dropped from buf and not yet reported. The notice saying
	// so is made when a batch is sent, never kept in buf: there it could itself be
	// dropped by a later Add and its count lost, and it would push buf past max.
	dropped int
	wake    chan struct{}
}

// MainStartFailure starts the log line the supervisor ships when the sandbox's
// command cannot start; the rest is exec's reason ("exec /bin/bash: no such file or
// directory"), which the gateway puts on the sandbox's Ready condition.
const MainStartFailure = "main process could not start: "

// Flush ships what is buffered now and returns once the gateway acknowledged it (or
// ctx ends): a line that must arrive before a following call (the reason before the
// exit report) is flushed first.
func (s *Shipper) Flush(ctx context.Context) error { return s.flush(ctx) }

// ShipperOptions tune a Shipper; zero values pick defaults.
type ShipperOptions struct {
	MaxBuffered int           // lines kept while the gateway is away; default 10000
	Batch       int           // lines per push; default 500
	Interval    time.Duration // how long lines may wait to be batched; default 250 ms
	// Identity is the supervisor instance the pushes come from (the gateway refuses
	// pushes from another instance while the bound one is live); nil = none sent.
	Identity *Identity
}

// NewShipper returns a shipper for sandboxID over api. Run it.
func NewShipper(api pb.OpenShellClient, sandboxID string, o ShipperOptions) *Shipper {
	if o.MaxBuffered <= 0 {
		o.MaxBuffered = 10000
	}
	if o.Batch <= 0 {
		o.Batch = 500
	}
	if o.Interval <= 0 {
		o.Interval = 250 * time.Millisecond
	}
	return &Shipper{sandboxID: sandboxID, identity: o.Identity, push: api.PushSandboxLogs, max: o.MaxBuffered, batch: o.Batch,
		interval: o.Interval, wake: make(chan struct{}, 1)}
}

// Add queues a line stamped now; it never blocks. source is set to "sandbox".
func (s *Shipper) Add(level, target, message string, fields map[string]string) {
	s.addAt(time.Now(), level, target, message, fields)
}

// addAt queues a line stamped at (a record's own time: one logged before the shipper
// existed keeps it).
func (s *Shipper) addAt(at time.Time, level, target, message string, fields map[string]string) {
	line := &pb.SandboxLogLine{SandboxId: s.sandboxID, TimestampMs: at.UnixMilli(), Level: level,
		Target: target, Message: message, Source: "sandbox", Fields: fields}
	s.mu.Lock()
	if len(s.buf) >= s.max {
		s.buf = s.buf[1:]
		s.dropped++
	}
	s.buf = append(s.buf, line)
	full := len(s.buf) >= s.batch
	s.mu.Unlock()
	if full {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// Pending is the number of lines not yet acknowledged by the gateway, counting a
// pending drop notice as one.
func (s *Shipper) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dropped > 0 {
		return len(s.buf) + 1
	}
	return len(s.buf)
}

// ErrNoLastFlush, as the cause of the context a Shipper runs under, ends its Run
// without the last attempt: for lines nobody can take any more (a restored guest's
// old identity, whose session the host refuses).
var ErrNoLastFlush = errors.New("log shipping ended without a last flush")

// Run ships until ctx ends, then makes one last attempt (bounded by 2 s) unless ctx
// ended with ErrNoLastFlush.
func (s *Shipper) Run(ctx context.Context) {
	fails := 0
	for {
		var wait time.Duration = s.interval
		if err := s.flush(ctx); err != nil {
			wait = Backoff(fails, time.Second, 30*time.Second)
			fails++
			slog.Debug("log push failed; keeping lines", "err", err, "pending", s.Pending(), "retry_in", wait)
		} else {
			fails = 0
		}
		select {
		case <-ctx.Done():
			if errors.Is(context.Cause(ctx), ErrNoLastFlush) {
				return
			}
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			_ = s.flush(fctx)
			cancel()
			return
		case <-s.wake:
		case <-time.After(wait):
		}
	}
}

// flush sends everything buffered, one push per batch (the drop notice first, when
// lines were dropped); a batch leaves the buffer only after the gateway acknowledged it.
func (s *Shipper) flush(ctx context.Context) error {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	for {
		s.mu.Lock()
		d := s.dropped
		var batch []*pb.SandboxLogLine
		if d > 0 {
			batch = append(batch, &pb.SandboxLogLine{SandboxId: s.sandboxID, TimestampMs: time.Now().UnixMilli(),
				Level: "WARN", Target: "openshell-sandbox", Source: "sandbox",
				Message: fmt.Sprintf("%d log lines dropped while the gateway was unreachable", d)})
		}
		n := min(len(s.buf), s.batch-len(batch))
		lines := append([]*pb.SandboxLogLine(nil), s.buf[:n]...)
		batch = append(batch, lines...)
		s.mu.Unlock()
		if len(batch) == 0 {
			return nil
		}
		if err := s.pushBatch(ctx, batch); err != nil {
			return err
		}
		s.mu.Lock()
		// Adds while pushing may have dropped lines from the front, sent ones among
		// them: what is left of the batch is still at the front. Remove that, and
		// uncount the sent lines that Add counted as dropped.
		sent := make(map[*pb.SandboxLogLine]bool, n)
		for _, l := range lines {
			sent[l] = true
		}
		removed := 0
		for len(s.buf) > 0 && sent[s.buf[0]] {
			s.buf = s.buf[1:]
			removed++
		}
		s.dropped -= d + n - removed
		s.mu.Unlock()
	}
}

func (s *Shipper) pushBatch(ctx context.Context, batch []*pb.SandboxLogLine) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if s.identity != nil {
		ctx = s.identity.Outgoing(ctx)
	}
	st, err := s.push(ctx)
	if err != nil {
		return err
	}
	if err := st.Send(&pb.PushSandboxLogsRequest{SandboxId: s.sandboxID, Logs: batch}); err != nil {
		_, rerr := st.CloseAndRecv()
		if rerr != nil {
			return rerr
		}
		return err
	}
	_, err = st.CloseAndRecv()
	return err
}

// Handler returns a slog.Handler that passes records to next and ships those at
// Info and above as supervisor events (target "openshell-sandbox").
func (s *Shipper) Handler(next slog.Handler) slog.Handler {
	return &teeHandler{next: next, s: s}
}

type teeHandler struct {
	next  slog.Handler
	s     *Shipper
	attrs []slog.Attr
}

func (h *teeHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || h.next.Enabled(ctx, l)
}

func (h *teeHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelInfo {
		fields := map[string]string{}
		for _, a := range h.attrs {
			fields[a.Key] = a.Value.String()
		}
		r.Attrs(func(a slog.Attr) bool {
			fields[a.Key] = a.Value.String()
			return true
		})
		at := r.Time
		if at.IsZero() {
			at = time.Now()
		}
		h.s.addAt(at, r.Level.String(), "openshell-sandbox", r.Message, fields)
	}
	if h.next.Enabled(ctx, r.Level) {
		return h.next.Handle(ctx, r)
	}
	return nil
}

func (h *teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &teeHandler{next: h.next.WithAttrs(as), s: h.s, attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}

func (h *teeHandler) WithGroup(name string) slog.Handler {
	return &teeHandler{next: h.next.WithGroup(name), s: h.s, attrs: h.attrs}
}
