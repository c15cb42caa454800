// Package drivertest holds the conformance suite every compute driver runs
// (Suite) and MemDriver, an in-memory driver for tests.
package drivertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers"
)

// Options tune Suite for one driver.
type Options struct {
	// Image is put in the default sandbox template.
	Image string
	// ReadyTimeout bounds every wait for an observation (ready, stopped,
	// gone). Default 60 s.
	ReadyTimeout time.Duration
	// NewSandbox builds the create request for a fresh id and name (fill
	// image, command, token, driver config). Default: DefaultSandbox with Image.
	NewSandbox func(id, name string) *computev1.DriverSandbox
	// SkipStopStart skips the stop/start steps for drivers that cannot.
	SkipStopStart bool
}

func (o *Options) fill() {
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = 60 * time.Second
	}
	if o.NewSandbox == nil {
		image := o.Image
		o.NewSandbox = func(id, name string) *computev1.DriverSandbox { return DefaultSandbox(id, name, image) }
	}
}

// SuiteToken is the sandbox token DefaultSandbox sets; the suite checks that
// no observation echoes it.
const SuiteToken = "drivertest-token-not-for-echo"

// DefaultSandbox is a create request with a long-running main process.
func DefaultSandbox(id, name, image string) *computev1.DriverSandbox {
	return &computev1.DriverSandbox{
		Id:   id,
		Name: name,
		Spec: &computev1.DriverSandboxSpec{
			LogLevel:     "info",
			Template:     &computev1.DriverSandboxTemplate{Image: image, Labels: map[string]string{"openshell.test/suite": "drivertest"}},
			SandboxToken: SuiteToken,
			Command:      []string{"sleep", "3600"},
		},
	}
}

var (
	runID   = randomHex(4)
	counter atomic.Int64
)

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// NewIDs returns an id and name unique to this test process run.
func NewIDs() (id, name string) {
	n := counter.Add(1)
	return fmt.Sprintf("dt-%s-%d-%s", runID, n, randomHex(4)), fmt.Sprintf("drivertest-%s-%d", runID, n)
}

// Suite runs the conformance tests against drivers made by newDriver (called
// once per subtest with that subtest's t; the suite closes the driver).
func Suite(t *testing.T, newDriver func(t *testing.T) drivers.Driver, opts Options) {
	t.Helper()
	opts.fill()
	open := func(t *testing.T) drivers.Driver {
		d := newDriver(t)
		t.Cleanup(func() {
			if err := d.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return d
	}

	t.Run("Capabilities", func(t *testing.T) {
		caps, err := open(t).Capabilities(t.Context())
		if err != nil {
			t.Fatalf("Capabilities: %v", err)
		}
		if caps.GetDriverName() == "" {
			t.Errorf("Capabilities: empty driver_name")
		}
	})

	t.Run("ValidateRejectsBadInput", func(t *testing.T) {
		d := open(t)
		id, name := NewIDs()
		if err := d.ValidateCreate(t.Context(), opts.NewSandbox(id, name)); err != nil {
			t.Fatalf("ValidateCreate(good sandbox): %v", err)
		}
		for _, tc := range []struct {
			what string
			edit func(sb *computev1.DriverSandbox)
		}{
			{"no id", func(sb *computev1.DriverSandbox) { sb.Id = "" }},
			{"id with path separator", func(sb *computev1.DriverSandbox) { sb.Id = "../" + sb.Id }},
			{"no name", func(sb *computev1.DriverSandbox) { sb.Name = "" }},
			{"name with space and slash", func(sb *computev1.DriverSandbox) { sb.Name = "Bad Name/../x" }},
			{"name too long", func(sb *computev1.DriverSandbox) { sb.Name = strings.Repeat("a", 300) }},
		} {
			sb := opts.NewSandbox(id, name)
			tc.edit(sb)
			if err := d.ValidateCreate(t.Context(), sb); !errors.Is(err, drivers.ErrInvalidArgument) {
				t.Errorf("ValidateCreate(%s) = %v, want ErrInvalidArgument", tc.what, err)
			}
		}
		if err := d.ValidateCreate(t.Context(), nil); !errors.Is(err, drivers.ErrInvalidArgument) {
			t.Errorf("ValidateCreate(nil) = %v, want ErrInvalidArgument", err)
		}
	})

	t.Run("UnknownSandbox", func(t *testing.T) {
		d := open(t)
		id, name := NewIDs()
		if sb, err := d.Get(t.Context(), id, name); !errors.Is(err, drivers.ErrNotFound) {
			t.Errorf("Get(unknown) = %v, %v; want ErrNotFound", sb, err)
		}
		deleted, err := d.Delete(t.Context(), id, name)
		if err != nil || deleted {
			t.Errorf("Delete(unknown) = %v, %v; want false, nil", deleted, err)
		}
	})

	t.Run("WatchClosesWhenContextEnds", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		events, err := open(t).Watch(ctx)
		if err != nil {
			cancel()
			t.Fatalf("Watch: %v", err)
		}
		cancel()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case _, ok := <-events:
				if !ok {
					return
				}
			case <-timeout:
				t.Fatalf("Watch channel still open 10s after its context ended")
			}
		}
	})

	t.Run("Lifecycle", func(t *testing.T) { lifecycle(t, open(t), opts) })
}

func lifecycle(t *testing.T, d drivers.Driver, opts Options) {
	ctx := t.Context()
	id, name := NewIDs()
	// Whatever happens below, leave no sandbox behind.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), opts.ReadyTimeout)
		defer cancel()
		if _, err := d.Delete(ctx, id, name); err != nil {
			t.Errorf("cleanup: Delete(%s): %v", id, err)
		}
	})

	events, err := d.Watch(ctx)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	rec := newRecorder(events, id)

	sb := opts.NewSandbox(id, name)
	want := proto.CloneOf(sb)
	if err := d.ValidateCreate(ctx, sb); err != nil {
		t.Fatalf("ValidateCreate: %v", err)
	}
	if err := d.Create(ctx, sb); err != nil {
		t.Fatalf("Create: %v", err)
	}
	if !proto.Equal(sb, want) {
		t.Errorf("Create modified its argument")
	}
	step(t, "VisibleAfterCreate", func(t *testing.T) {
		got, err := d.Get(ctx, id, name)
		if err != nil {
			t.Fatalf("Get right after Create: %v", err)
		}
		checkObservation(t, got, id, name)
		list, err := d.List(ctx)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		found := false
		for _, s := range list {
			if s.GetId() == id {
				found = true
				checkObservation(t, s, id, name)
			}
		}
		if !found {
			t.Errorf("List after Create: sandbox %s missing among %d", id, len(list))
		}
		if _, err := rec.wait(opts.ReadyTimeout, func(s *computev1.DriverSandbox) bool { return true }); err != nil {
			t.Errorf("Watch: no sandbox event after Create: %v", err)
		}
	})

	step(t, "BecomesReady", func(t *testing.T) { waitReady(t, d, rec, id, name, opts) })

	step(t, "CreateTwiceFails", func(t *testing.T) {
		if err := d.Create(ctx, opts.NewSandbox(id, name)); !errors.Is(err, drivers.ErrAlreadyExists) {
			t.Errorf("second Create(%s) = %v, want ErrAlreadyExists", id, err)
		}
	})

	if !opts.SkipStopStart {
		step(t, "Stop", func(t *testing.T) {
			mark := rec.mark()
			if err := d.Stop(ctx, id, name); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			if _, err := rec.waitFrom(mark, opts.ReadyTimeout, func(s *computev1.DriverSandbox) bool {
				return drivers.StopConfirmed(s.GetStatus())
			}); err != nil {
				t.Errorf("Watch: no stopped observation after Stop: %v", err)
			}
			poll(t, opts.ReadyTimeout, "Get to confirm the stop", func() (bool, string) {
				got, err := d.Get(ctx, id, name)
				if err != nil {
					return false, err.Error()
				}
				return drivers.StopConfirmed(got.GetStatus()), fmt.Sprint(got.GetStatus().GetConditions())
			})
		})
		step(t, "StartAgain", func(t *testing.T) {
			mark := rec.mark()
			if err := d.Start(ctx, id, name); err != nil {
				t.Fatalf("Start: %v", err)
			}
			rec.from(mark)
			waitReady(t, d, rec, id, name, opts)
		})
	}

	step(t, "Delete", func(t *testing.T) {
		deleted, err := d.Delete(ctx, id, name)
		if err != nil || !deleted {
			t.Fatalf("Delete = %v, %v; want true, nil", deleted, err)
		}
		poll(t, opts.ReadyTimeout, "Get to report ErrNotFound after Delete", func() (bool, string) {
			got, err := d.Get(ctx, id, name)
			if errors.Is(err, drivers.ErrNotFound) {
				return true, ""
			}
			return false, fmt.Sprintf("%v, %v", got.GetStatus(), err)
		})
		if err := rec.waitDeleted(opts.ReadyTimeout); err != nil {
			t.Errorf("Watch: %v", err)
		}
		list, err := d.List(ctx)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		for _, s := range list {
			if s.GetId() == id && !s.GetStatus().GetDeleting() {
				t.Errorf("List after Delete still has %s (not deleting)", id)
			}
		}
		if deleted, err := d.Delete(ctx, id, name); err != nil || deleted {
			t.Errorf("second Delete = %v, %v; want false, nil", deleted, err)
		}
	})

	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.echoedToken {
		t.Errorf("a Watch observation of %s echoed the sandbox token", id)
	}
}

// step runs a named sequential step and stops the lifecycle when it fails,
// since later steps depend on it.
func step(t *testing.T, name string, f func(t *testing.T)) {
	t.Helper()
	if !t.Run(name, f) {
		t.FailNow()
	}
}

func checkObservation(t *testing.T, s *computev1.DriverSandbox, id, name string) {
	t.Helper()
	if s.GetId() != id || s.GetName() != name {
		t.Errorf("observation id/name = %q/%q, want %q/%q", s.GetId(), s.GetName(), id, name)
	}
	if tok := s.GetSpec().GetSandboxToken(); tok != "" {
		t.Errorf("observation of %s echoes the sandbox token", id)
	}
}

func waitReady(t *testing.T, d drivers.Driver, rec *recorder, id, name string, opts Options) {
	t.Helper()
	if _, err := rec.wait(opts.ReadyTimeout, isReady); err != nil {
		t.Errorf("Watch: no Ready=True observation: %v", err)
	}
	poll(t, opts.ReadyTimeout, "Get to report Ready=True", func() (bool, string) {
		got, err := d.Get(t.Context(), id, name)
		if err != nil {
			return false, err.Error()
		}
		checkObservation(t, got, id, name)
		return isReady(got), fmt.Sprint(got.GetStatus().GetConditions())
	})
}

func isReady(s *computev1.DriverSandbox) bool {
	return drivers.BackendPhase(s.GetStatus()) == openshellv1.SandboxPhase_SANDBOX_PHASE_READY
}

// poll calls f every 100 ms until it reports true or timeout passes.
func poll(t *testing.T, timeout time.Duration, what string, f func() (bool, string)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	last := ""
	for {
		ok, state := f()
		if ok {
			return
		}
		last = state
		select {
		case <-ctx.Done():
			t.Fatalf("timed out after %v waiting for %s; last state: %s", timeout, what, last)
		case <-tick.C:
		}
	}
}

// recorder collects watch events about one sandbox.
type recorder struct {
	id      string
	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every event
	obs     []*computev1.DriverSandbox
	start   int // wait considers obs[start:]
	deleted bool
	ended   bool
	// echoedToken: some observation carried spec.sandbox_token.
	echoedToken bool
}

func newRecorder(events <-chan *computev1.WatchSandboxesEvent, id string) *recorder {
	r := &recorder{id: id, changed: make(chan struct{})}
	go func() {
		for ev := range events {
			r.mu.Lock()
			switch {
			case ev.GetSandbox() != nil && ev.GetSandbox().GetSandbox().GetId() == id:
				s := ev.GetSandbox().GetSandbox()
				r.obs = append(r.obs, s)
				r.echoedToken = r.echoedToken || s.GetSpec().GetSandboxToken() != ""
			case ev.GetDeleted() != nil && ev.GetDeleted().GetSandboxId() == id:
				r.deleted = true
			}
			r.notifyLocked()
			r.mu.Unlock()
		}
		r.mu.Lock()
		r.ended = true
		r.notifyLocked()
		r.mu.Unlock()
	}()
	return r
}

func (r *recorder) notifyLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *recorder) mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.obs)
}

// from makes later waits ignore observations before mark.
func (r *recorder) from(mark int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.start = mark
}

func (r *recorder) wait(timeout time.Duration, pred func(*computev1.DriverSandbox) bool) (*computev1.DriverSandbox, error) {
	r.mu.Lock()
	start := r.start
	r.mu.Unlock()
	return r.waitFrom(start, timeout, pred)
}

func (r *recorder) waitFrom(start int, timeout time.Duration, pred func(*computev1.DriverSandbox) bool) (*computev1.DriverSandbox, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		for _, s := range r.obs[min(start, len(r.obs)):] {
			if pred(s) {
				r.mu.Unlock()
				return s, nil
			}
		}
		ended, changed, n := r.ended, r.changed, len(r.obs)
		r.mu.Unlock()
		if ended {
			return nil, fmt.Errorf("watch channel closed after %d observations of %s", n, r.id)
		}
		select {
		case <-changed:
		case <-deadline.C:
			return nil, fmt.Errorf("timed out after %v (%d observations of %s)", timeout, n, r.id)
		}
	}
}

func (r *recorder) waitDeleted(timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		deleted, ended, changed := r.deleted, r.ended, r.changed
		r.mu.Unlock()
		switch {
		case deleted:
			return nil
		case ended:
			return fmt.Errorf("watch channel closed before a deleted event for %s", r.id)
		}
		select {
		case <-changed:
		case <-deadline.C:
			return fmt.Errorf("no deleted event for %s within %v", r.id, timeout)
		}
	}
}
