package gateway

import (
	"cmp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/openshell/openshell/api/openshellv1"
)

// notifier wakes WatchSandbox streams when a sandbox changes. Signals coalesce: a
// watcher re-reads the record, so missing an intermediate change is harmless.
type notifier struct {
	mu   sync.Mutex
	subs map[string]map[chan struct{}]struct{}
}

func newNotifier() *notifier { return &notifier{subs: map[string]map[chan struct{}]struct{}{}} }

func (n *notifier) subscribe(id string) (chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	n.mu.Lock()
	if n.subs[id] == nil {
		n.subs[id] = map[chan struct{}]struct{}{}
	}
	n.subs[id][ch] = struct{}{}
	n.mu.Unlock()
	return ch, func() {
		n.mu.Lock()
		delete(n.subs[id], ch)
		if len(n.subs[id]) == 0 {
			delete(n.subs, id)
		}
		n.mu.Unlock()
	}
}

func (n *notifier) notify(id string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for ch := range n.subs[id] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// gatewayLog records a gateway-side line in the sandbox's log (source "gateway"), so
// `sandbox logs` and WatchSandbox show lifecycle steps next to the sandbox's own.
func (s *Server) gatewayLog(id, level, msg string) {
	s.logs.append(id, &openshellv1.SandboxLogLine{SandboxId: id, TimestampMs: time.Now().UnixMilli(), Level: level,
		Target: "gateway", Message: msg, Source: "gateway"})
}

// logBook keeps a bounded ring of log lines and platform events per sandbox and fans
// new ones out to followers.
type logBook struct {
	max    int
	mu     sync.Mutex
	lines  map[string][]*openshellv1.SandboxLogLine
	events map[string][]*openshellv1.PlatformEvent
	subs   map[string]map[*follower]struct{}
}

type follower struct {
	logs   chan *openshellv1.SandboxLogLine
	events chan *openshellv1.PlatformEvent
	lost   chan struct{} // signalled when a line was dropped (slow reader)
}

const maxEvents = 200

func newLogBook(max int) *logBook {
	return &logBook{max: max, lines: map[string][]*openshellv1.SandboxLogLine{},
		events: map[string][]*openshellv1.PlatformEvent{}, subs: map[string]map[*follower]struct{}{}}
}

func (b *logBook) append(id string, ls ...*openshellv1.SandboxLogLine) {
	b.mu.Lock()
	defer b.mu.Unlock()
	buf := append(b.lines[id], ls...)
	if len(buf) > b.max {
		buf = slices.Clone(buf[len(buf)-b.max:])
	}
	b.lines[id] = buf
	for f := range b.subs[id] {
		for _, l := range ls {
			select {
			case f.logs <- l:
			default:
				select {
				case f.lost <- struct{}{}:
				default:
				}
			}
		}
	}
}

func (b *logBook) addEvent(id string, e *openshellv1.PlatformEvent) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ev := append(b.events[id], e)
	if len(ev) > maxEvents {
		ev = slices.Clone(ev[len(ev)-maxEvents:])
	}
	b.events[id] = ev
	for f := range b.subs[id] {
		select {
		case f.events <- e:
		default:
		}
	}
}

func (b *logBook) forget(id string) {
	b.mu.Lock()
	delete(b.lines, id)
	delete(b.events, id)
	b.mu.Unlock()
}

type logFilter struct {
	since    int64
	sources  []string
	minLevel string
}

var levelRank = map[string]int{"TRACE": 0, "DEBUG": 1, "INFO": 2, "WARN": 3, "WARNING": 3, "ERROR": 4}

func (f logFilter) match(l *openshellv1.SandboxLogLine) bool {
	if f.since != 0 && l.GetTimestampMs() < f.since {
		return false
	}
	if len(f.sources) > 0 {
		src := l.GetSource()
		if src == "" {
			src = "gateway"
		}
		if !slices.Contains(f.sources, src) {
			return false
		}
	}
	if f.minLevel != "" {
		want, ok := levelRank[strings.ToUpper(f.minLevel)]
		got, ok2 := levelRank[strings.ToUpper(l.GetLevel())]
		if ok && ok2 && got < want {
			return false
		}
	}
	return true
}

// tail returns the last n matching lines to arrive, in the order of their times, and
// the total held. A sandbox ships its lines in batches, after the gateway wrote its own
// lines of the same moments; lines of one millisecond keep their order of arrival.
func (b *logBook) tail(id string, n int, f logFilter) ([]*openshellv1.SandboxLogLine, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	all := b.lines[id]
	var out []*openshellv1.SandboxLogLine
	for i := len(all) - 1; i >= 0 && len(out) < n; i-- {
		if f.match(all[i]) {
			out = append(out, all[i])
		}
	}
	slices.Reverse(out)
	slices.SortStableFunc(out, func(a, b *openshellv1.SandboxLogLine) int {
		return cmp.Compare(a.GetTimestampMs(), b.GetTimestampMs())
	})
	return out, len(all)
}

func (b *logBook) eventTail(id string, n int) []*openshellv1.PlatformEvent {
	b.mu.Lock()
	defer b.mu.Unlock()
	ev := b.events[id]
	if n < len(ev) {
		ev = ev[len(ev)-n:]
	}
	return slices.Clone(ev)
}

func (b *logBook) follow(id string) (*follower, func()) {
	f := &follower{logs: make(chan *openshellv1.SandboxLogLine, 1024), events: make(chan *openshellv1.PlatformEvent, 64), lost: make(chan struct{}, 1)}
	b.mu.Lock()
	if b.subs[id] == nil {
		b.subs[id] = map[*follower]struct{}{}
	}
	b.subs[id][f] = struct{}{}
	b.mu.Unlock()
	return f, func() {
		b.mu.Lock()
		delete(b.subs[id], f)
		if len(b.subs[id]) == 0 {
			delete(b.subs, id)
		}
		b.mu.Unlock()
	}
}
