package supervisor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openshell/openshell/supervisor/bootstrap"
)

func TestParseIdentity(t *testing.T) {
	doc := `{"endpoint":"http://gw","sandbox_id":"new","token":"t","instance_secret":"ab","reidentify":{"host_time_unix_nano":1700000000000000000,"entropy":"AAEC"}}`
	id, err := ParseIdentity([]byte(doc))
	if err != nil || id.Config.SandboxID != "new" || id.Config.Token != "t" || len(id.Entropy) != 3 || id.HostTime.Unix() != 1700000000 {
		t.Fatalf("ParseIdentity = %+v, %v", id, err)
	}
	// A resumed guest's runner offers no identity, only the host's time.
	clock, err := ParseIdentity([]byte(`{"reidentify":{"host_time_unix_nano":1700000000000000000}}`))
	if err != nil || clock.Config != nil || clock.HostTime.Unix() != 1700000000 {
		t.Fatalf("ParseIdentity(host time only) = %+v, %v", clock, err)
	}
	for _, bad := range []string{`{"sandbox_id":"x"}`, `not json`, `{"endpoint":"e","sandbox_id":"x","token":"t","reidentify":{"entropy":5}}`,
		`{}`, `{"reidentify":{"entropy":"AAEC"}}`, `{"token":"t","reidentify":{"host_time_unix_nano":-1}}`} {
		if _, err := ParseIdentity([]byte(bad)); err == nil {
			t.Errorf("ParseIdentity(%s) accepted", bad)
		}
	}
}

// FuzzParseIdentity: the document comes from the host; nothing it holds may panic.
func FuzzParseIdentity(f *testing.F) {
	f.Add([]byte(`{"endpoint":"http://gw","sandbox_id":"new","token":"t","reidentify":{"host_time_unix_nano":1,"entropy":"AAEC"}}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"reidentify":{"host_time_unix_nano":1700000000000000000}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		id, err := ParseIdentity(b)
		if err == nil && (id.Config == nil && id.HostTime.IsZero() || id.Config != nil && id.Config.SandboxID == "") {
			t.Fatalf("accepted a document with neither a sandbox id nor the host's time: %s", b)
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

// TestWatcherStepsClockOnResume: a resumed guest's host offers no identity, only its
// time: the clock is stepped to it and the run goes on as the same sandbox.
func TestWatcherStepsClockOnResume(t *testing.T) {
	var stepped atomic.Value
	old := stepClock
	stepClock = func(at time.Time) error { stepped.Store(at); return nil }
	t.Cleanup(func() { stepClock = old })
	hostTime := time.Now().Add(3 * time.Hour)
	returns := make(chan struct{}, 1)
	re := &Reidentify{Returns: returns, Fetch: func(context.Context) ([]byte, error) {
		return json.Marshal(map[string]any{"reidentify": map[string]any{"host_time_unix_nano": hostTime.UnixNano()}})
	}}
	w := &watcher{re: re, current: "same", log: slog.New(slog.DiscardHandler), foundCh: make(chan struct{})}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go w.watch(ctx, cancel)
	returns <- struct{}{}
	deadline := time.Now().Add(5 * time.Second)
	for stepped.Load() == nil {
		if time.Now().After(deadline) {
			t.Fatal("the clock was not stepped after a host return that offered the host's time")
		}
		time.Sleep(time.Millisecond)
	}
	if got := stepped.Load().(time.Time); !got.Equal(hostTime) {
		t.Fatalf("clock stepped to %v, want the host's %v", got, hostTime)
	}
	time.Sleep(50 * time.Millisecond)
	if ctx.Err() != nil || w.taken() {
		t.Fatal("an offer of the host's time alone ended the run")
	}
}

// TestReidentifiedRunKillsAtOnce: when a restored copy takes a new identity, the old
// identity's main process, here one that ignores SIGTERM, and the program it left in
// its group are killed at once, not after the stop grace (10 s here) a supervisor
// stop gives; the new identity's run starts right after.
func TestReidentifiedRunKillsAtOnce(t *testing.T) {
	g := newGW()
	addr, _ := serveGW(t, g, "127.0.0.1:0")
	base := agentReachableDir(t, "supervisor-test-")
	root := rootOnlyRoot(t, base)
	pidFile := filepath.Join(base, "sandbox", "child.pid")
	cfg := &bootstrap.Config{Endpoint: "http://" + addr, SandboxID: "sb-old", SandboxName: "box", Token: "tok",
		Main: bootstrap.MainProcessSpec{Version: 1, Command: []string{"/bin/sh", "-c", "trap '' TERM; sleep 300 & echo $! > " + pidFile + "; wait"}}}
	newDoc, err := json.Marshal(bootstrap.IdentityDoc{Config: bootstrap.Config{Endpoint: "http://" + addr, SandboxID: "sb-new", SandboxName: "box2", Token: "tok2"}})
	if err != nil {
		t.Fatal(err)
	}
	returns := make(chan struct{}, 1)
	applied := make(chan time.Time, 1)
	re := &Reidentify{
		Fetch:   func(context.Context) ([]byte, error) { return bytes.Clone(newDoc), nil },
		Returns: returns,
		Apply:   func(*Identity) { applied <- time.Now() },
	}
	no := false
	o := Options{RunDir: filepath.Join(base, "run"), Root: root, SandboxDir: filepath.Join(base, "sandbox"),
		SelfExe: os.Args[0], ReapOrphans: &no, StopGrace: 10 * time.Second,
		Dial: func(ctx context.Context, a string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", a)
		}}
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- RunVM(ctx, cfg, o, re) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-runErr:
		case <-time.After(15 * time.Second):
			t.Error("RunVM did not return after cancel")
		}
	})
	var child int
	for deadline := time.Now().Add(20 * time.Second); child == 0; time.Sleep(20 * time.Millisecond) {
		if b, err := os.ReadFile(pidFile); err == nil {
			child, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		if time.Now().After(deadline) {
			t.Fatal("the old identity's main process did not start its child within 20 s")
		}
	}
	returned := time.Now()
	returns <- struct{}{}
	select {
	case at := <-applied:
		if took := at.Sub(returned); took > 5*time.Second {
			t.Fatalf("the new identity was applied %v after the host returned: the old main process got the stop grace", took)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the new identity was never applied")
	}
	// The child was killed with its group (a zombie until its reparented parent reaps it).
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", child))
		if err != nil || strings.Contains(string(b), ") Z ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the old main process's child %d still runs: %s", child, b)
		}
	}
}
