package channel

import (
	"context"
	"testing"
	"time"
)

// TestReturnFeed: every subscriber hears a return, one pending value holds any
// number of unread returns, and a subscriber whose context ended is dropped.
func TestReturnFeed(t *testing.T) {
	f := &returnFeed{subs: map[chan struct{}]struct{}{}}
	ctx1, cancel1 := context.WithCancel(t.Context())
	a, b := f.subscribe(ctx1), f.subscribe(t.Context())
	f.notify()
	f.notify() // not blocked by the unread value
	for name, ch := range map[string]<-chan struct{}{"a": a, "b": b} {
		select {
		case <-ch:
		default:
			t.Fatalf("subscriber %s did not hear the return", name)
		}
		select {
		case <-ch:
			t.Fatalf("subscriber %s got two values for returns it had not read", name)
		default:
		}
	}
	cancel1()
	for i := 0; ; i++ {
		f.mu.Lock()
		n := len(f.subs)
		f.mu.Unlock()
		if n == 1 {
			break
		}
		if i > 1000 {
			t.Fatalf("%d subscribers after one's context ended; want 1", n)
		}
		time.Sleep(time.Millisecond)
	}
	f.notify()
	if len(a) != 0 || len(b) != 1 {
		t.Fatalf("after a's end: a holds %d, b %d; want 0 and 1", len(a), len(b))
	}
}
