package vm

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"
)

// TestClaimWhileRecording: a claim the runner refused returns at once, while the
// records are still being written (before, it waited for them); recorded then waits
// for the records. A claim taken returns only with its records, and a record that
// failed fails it.
func TestClaimWhileRecording(t *testing.T) {
	refused := errors.New("runner: claim: HTTP 409")
	diskFull := errors.New("write runner.json: no space left on device")

	t.Run("refused claim returns before the records", func(t *testing.T) {
		release := make(chan struct{})
		defer close(release)
		start := time.Now()
		recorded, _, err := claimWhileRecording(t.Context(),
			func(context.Context) error { return refused },
			func() error {
				// Bounded, so a claim that waits for the records fails the test below
				// rather than hanging it.
				select {
				case <-release:
				case <-time.After(5 * time.Second):
				}
				return nil
			})
		if !errors.Is(err, refused) {
			t.Fatalf("err = %v, want the runner's refusal", err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("the refused claim returned after %v: it waited for the records", took)
		}
		waited := make(chan error, 1)
		go func() { waited <- recorded() }()
		select {
		case err := <-waited:
			t.Fatalf("recorded returned (%v) before the records were written", err)
		case <-time.After(50 * time.Millisecond):
		}
		release <- struct{}{}
		if err := <-waited; err != nil {
			t.Fatalf("recorded = %v, want nil", err)
		}
	})

	t.Run("taken claim waits for its records", func(t *testing.T) {
		wrote := false
		var tellEnded time.Time
		recorded, toldAt, err := claimWhileRecording(t.Context(),
			func(context.Context) error { tellEnded = time.Now(); return nil },
			func() error { time.Sleep(300 * time.Millisecond); wrote = true; return nil })
		if err != nil || !wrote {
			t.Fatalf("err = %v, records written %v: want nil after the records", err, wrote)
		}
		// The create timeline's claim step ends when the runner was told (the guest
		// starts then), not when the records were written.
		if d := toldAt.Sub(tellEnded); d < 0 || d > 100*time.Millisecond {
			t.Fatalf("toldAt is %v after the tell ended, want at once (not at the records' end, 300 ms later)", d)
		}
		if err := recorded(); err != nil {
			t.Fatalf("recorded = %v", err)
		}
	})

	t.Run("failed record fails the claim", func(t *testing.T) {
		recorded, _, err := claimWhileRecording(t.Context(),
			func(context.Context) error { return nil },
			func() error { return diskFull })
		if !errors.Is(err, diskFull) {
			t.Fatalf("err = %v, want the record's error", err)
		}
		if err := recorded(); !errors.Is(err, diskFull) {
			t.Fatalf("recorded = %v, want the record's error again", err)
		}
	})
}

// TestTakePrefersSettled: a claim takes the longest-waiting VM whose warm-up is over
// before any still warming up, and one warming up only when no other waits; never one
// that does not wait yet, is gone, or belongs to another pool.
func TestTakePrefersSettled(t *testing.T) {
	now := time.Now()
	p := &pools{claimed: map[string]int{}, members: map[string]*poolMember{}}
	add := func(id, pool string, age time.Duration, waiting, settled, gone bool) {
		p.members[id] = &poolMember{id: id, pool: pool, since: now.Add(-age), waiting: waiting, settled: settled, gone: gone}
	}
	add("warming-oldest", "a", 9*time.Minute, true, false, false)
	add("settled-newer", "a", 2*time.Minute, true, true, false)
	add("settled-older", "a", 5*time.Minute, true, true, false)
	add("booting", "a", 10*time.Minute, false, false, false)
	add("gone", "a", 11*time.Minute, true, true, true)
	add("other-pool", "b", 12*time.Minute, true, true, false)
	var got []string
	for m := p.take("a"); m != nil; m = p.take("a") {
		got = append(got, m.id)
	}
	want := []string{"settled-older", "settled-newer", "warming-oldest"}
	if !slices.Equal(got, want) {
		t.Fatalf("taken in the order %v, want %v", got, want)
	}
	if p.claimed["a"] != 3 {
		t.Errorf("claimed[a] = %d, want 3", p.claimed["a"])
	}
}
