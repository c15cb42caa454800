package vm

import (
	"context"
	"log/slog"
	"sync"

	"github.com/openshell/openshell/api/computev1"
)

// watchBuffer is how many events a slow watcher may lag behind before its stream is
// closed (it then re-watches and re-lists, which is how the gateway recovers anyway).
const watchBuffer = 256

// hub fans sandbox events out to watchers, in emission order.
type hub struct {
	mu   sync.Mutex
	subs map[chan *computev1.WatchSandboxesEvent]struct{}
	log  *slog.Logger
	done bool
}

func newHub(log *slog.Logger) *hub {
	return &hub{subs: map[chan *computev1.WatchSandboxesEvent]struct{}{}, log: log}
}

// subscribe registers a watcher. initial, called under the hub lock, returns the events
// to queue first (the current sandboxes), so no later event can overtake them.
func (h *hub) subscribe(ctx context.Context, initial func() []*computev1.WatchSandboxesEvent) <-chan *computev1.WatchSandboxesEvent {
	ch := make(chan *computev1.WatchSandboxesEvent, watchBuffer)
	h.mu.Lock()
	if h.done {
		h.mu.Unlock()
		close(ch)
		return ch
	}
	for _, ev := range initial() {
		select {
		case ch <- ev:
		default:
		}
	}
	h.subs[ch] = struct{}{}
	h.mu.Unlock()
	go func() {
		<-ctx.Done()
		h.mu.Lock()
		defer h.mu.Unlock()
		if _, ok := h.subs[ch]; ok {
			delete(h.subs, ch)
			close(ch)
		}
	}()
	return ch
}

// publish must be called with h.mu held (see Driver.emit).
func (h *hub) publishLocked(ev *computev1.WatchSandboxesEvent) {
	for ch := range h.subs {
		select {
		case ch <- ev:
		default:
			h.log.Warn("watch: watcher too slow; closing its stream so it re-lists", "buffer", watchBuffer)
			delete(h.subs, ch)
			close(ch)
		}
	}
}

func (h *hub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.done = true
	for ch := range h.subs {
		delete(h.subs, ch)
		close(ch)
	}
}
