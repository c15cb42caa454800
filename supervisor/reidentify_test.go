package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
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

// TestWatcherRetriesFailedProbe: without a host return nothing is asked (a gateway
// reconnect is no reason); after one, a probe that fails is asked again until the
// host answers, and the identity it offers is taken.
func TestWatcherRetriesFailedProbe(t *testing.T) {
	var fetches atomic.Int32
	returns := make(chan struct{}, 1)
	re := &Reidentify{Returns: returns, Fetch: func(context.Context) ([]byte, error) {
		if fetches.Add(1) < 3 {
			return nil, errors.New("guest channel: read a new identity: i/o timeout")
		}
		return json.Marshal(map[string]any{"endpoint": "e", "sandbox_id": "new", "token": "t"})
	}}
	w := &watcher{re: re, current: "old", log: slog.New(slog.DiscardHandler), foundCh: make(chan struct{})}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go w.watch(ctx, cancel)
	time.Sleep(100 * time.Millisecond)
	if n := fetches.Load(); n != 0 {
		t.Fatalf("%d fetches without a host return; want none", n)
	}
	returns <- struct{}{}
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("no identity taken after %d fetches", fetches.Load())
	}
	if n := fetches.Load(); n != 3 || !w.taken() || w.found.Config.SandboxID != "new" {
		t.Fatalf("%d fetches, found %+v; want 3 (two failures, then the offer) and the new identity", n, w.found)
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
