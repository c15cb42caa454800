package supervisor

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestParseIdentity(t *testing.T) {
	doc := `{"endpoint":"http://gw","sandbox_id":"new","token":"t","instance_secret":"ab","reidentify":{"host_time_unix_nano":1700000000000000000,"entropy":"AAEC"}}`
	id, err := ParseIdentity([]byte(doc))
	if err != nil || id.Config.SandboxID != "new" || id.Config.Token != "t" || len(id.Entropy) != 3 || id.HostTime.Unix() != 1700000000 {
		t.Fatalf("ParseIdentity = %+v, %v", id, err)
	}
	for _, bad := range []string{`{"sandbox_id":"x"}`, `not json`, `{"endpoint":"e","sandbox_id":"x","token":"t","reidentify":{"entropy":5}}`} {
		if _, err := ParseIdentity([]byte(bad)); err == nil {
			t.Errorf("ParseIdentity(%s) accepted", bad)
		}
	}
}

// FuzzParseIdentity: the document comes from the host; nothing it holds may panic.
func FuzzParseIdentity(f *testing.F) {
	f.Add([]byte(`{"endpoint":"http://gw","sandbox_id":"new","token":"t","reidentify":{"host_time_unix_nano":1,"entropy":"AAEC"}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		id, err := ParseIdentity(b)
		if err == nil && (id.Config == nil || id.Config.SandboxID == "") {
			t.Fatalf("accepted a document without a sandbox id: %s", b)
		}
	})
}

// TestWatcherProbesOnReconnect: the first dial (the run's first session) asks
// nothing; a reconnect asks the host once at a time; an identity of another sandbox
// is taken, the run's own is not.
func TestWatcherProbesOnReconnect(t *testing.T) {
	var fetches atomic.Int32
	offer := atomic.Value{}
	offer.Store("")
	re := &Reidentify{Fetch: func(context.Context) ([]byte, error) {
		fetches.Add(1)
		id := offer.Load().(string)
		if id == "" {
			return nil, nil
		}
		return json.Marshal(map[string]any{"endpoint": "e", "sandbox_id": id, "token": "t"})
	}}
	w := &watcher{re: re, current: "old", log: slog.New(slog.DiscardHandler), foundCh: make(chan struct{})}
	ctx := t.Context()
	w.dialing(ctx)
	time.Sleep(50 * time.Millisecond)
	if n := fetches.Load(); n != 0 {
		t.Fatalf("first dial probed %d times", n)
	}
	w.dialing(ctx)
	waitProbe := func() {
		for i := 0; i < 100; i++ {
			w.mu.Lock()
			p := w.probing
			w.mu.Unlock()
			if !p {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatal("probe did not end")
	}
	waitProbe()
	if n := fetches.Load(); n != 1 || w.found != nil {
		t.Fatalf("reconnect without an offer: %d fetches, found %v", n, w.found)
	}
	offer.Store("old")
	w.dialing(ctx)
	waitProbe()
	if w.found != nil {
		t.Fatal("took its own identity as a new one")
	}
	offer.Store("new")
	w.dialing(ctx)
	select {
	case <-w.foundCh:
	case <-time.After(5 * time.Second):
		t.Fatal("a new identity was not taken")
	}
	if w.found.Config.SandboxID != "new" || !strings.Contains(w.found.Config.Endpoint, "e") {
		t.Fatalf("found %+v", w.found.Config)
	}
}

// TestWatcherProbesOnHostReturn: with no dial at all, a return of the host end makes
// the watcher ask at once; a return whose host offers nothing leaves the run alone,
// one that offers another sandbox's identity ends it.
func TestWatcherProbesOnHostReturn(t *testing.T) {
	var fetches atomic.Int32
	offer := atomic.Value{}
	offer.Store("")
	returns := make(chan struct{}, 1)
	re := &Reidentify{Returns: returns, Fetch: func(context.Context) ([]byte, error) {
		fetches.Add(1)
		id := offer.Load().(string)
		if id == "" {
			return nil, nil
		}
		return json.Marshal(map[string]any{"endpoint": "e", "sandbox_id": id, "token": "t"})
	}}
	w := &watcher{re: re, current: "old", log: slog.New(slog.DiscardHandler), foundCh: make(chan struct{})}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		w.watch(ctx, cancel)
	}()
	waitFetches := func(n int32) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for fetches.Load() < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d fetches after a host return; want %d", fetches.Load(), n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	returns <- struct{}{}
	waitFetches(1)
	time.Sleep(50 * time.Millisecond)
	if ctx.Err() != nil || w.taken() {
		t.Fatal("a return without an offer ended the run")
	}
	offer.Store("new")
	t0 := time.Now()
	returns <- struct{}{}
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the run did not end after a return with a new identity")
	}
	if ctx.Err() == nil || !w.taken() || w.found.Config.SandboxID != "new" || fetches.Load() != 2 {
		t.Fatalf("after the offer: run ended %v, found %+v, %d fetches", ctx.Err(), w.found, fetches.Load())
	}
	t.Logf("return -> run ended in %v", time.Since(t0))
}
