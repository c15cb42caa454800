package gateway_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/gateway"
	"github.com/openshell/openshell/gateway/store"
)

// slowWrites is the real store whose updates take delay while on: a gateway whose
// writes queue behind others (a busy disk, many sandboxes changing at once).
type slowWrites struct {
	store.Store
	on    atomic.Bool
	delay time.Duration
}

func (s *slowWrites) Update(ctx context.Context, o *store.Object) (*store.Object, error) {
	if s.on.Load() {
		time.Sleep(s.delay)
	}
	return s.Store.Update(ctx, o)
}

// TestReadySeenBeforeTheSessionWrite: a watcher (what `sandbox create` waits on) sees
// READY as soon as the supervisor's session is accepted, not after the store write
// that records it, and the create timeline's "ready" is the accept's time, not the
// write's. The write still lands: the stored record says READY afterwards.
func TestReadySeenBeforeTheSessionWrite(t *testing.T) {
	const delay = 2 * time.Second
	slow := &slowWrites{delay: delay}
	e := startEnvWith(t, t.TempDir(), drivertest.NewMemDriver(), time.Hour, func(o *gateway.Options) {
		slow.Store = o.Store
		o.Store = slow
	})
	sb := e.create("alpha")
	id := sb.GetMetadata().GetId()
	// The backend is ready (the mem driver's 20 ms), the session is not up yet.
	deadline := time.Now().Add(10 * time.Second)
	for readyCondition(e.get("alpha")).GetReason() != "SupervisorNotConnected" {
		if time.Now().After(deadline) {
			t.Fatalf("backend not ready: %v", e.get("alpha").GetStatus())
		}
		time.Sleep(10 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	w, err := e.user.WatchSandbox(ctx, &openshellv1.WatchSandboxRequest{Id: id, FollowStatus: true, StopOnTerminal: true})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := w.Recv(); err != nil || ev.GetSandbox().GetStatus().GetPhase() != phaseProvisioning {
		t.Fatalf("first watch event %v (%v), want PROVISIONING", ev, err)
	}

	slow.on.Store(true)
	t0 := time.Now()
	e.connectSupervisor(id, "inst-1")
	for {
		ev, err := w.Recv()
		if err != nil {
			t.Fatalf("watch ended before READY: %v", err)
		}
		if ev.GetSandbox().GetStatus().GetPhase() == phaseReady {
			break
		}
	}
	seen := time.Since(t0)
	t.Logf("READY seen %v after the connect (store writes take %v)", seen.Round(time.Millisecond), delay)
	if seen >= delay/2 {
		t.Errorf("READY seen %v after the session was accepted: the watcher waited for the store write (%v)", seen, delay)
	}

	// The write lands; the stored timeline's ready is the accept's time.
	time.Sleep(delay + 500*time.Millisecond)
	slow.on.Store(false)
	got := e.get("alpha")
	tl := got.GetStatus().GetCreateTimeline()
	if len(tl) < 2 || tl[len(tl)-1].GetPhase() != "ready" {
		t.Fatalf("stored timeline %v does not end with ready", tl)
	}
	readyAt := time.UnixMicro(tl[len(tl)-1].GetAtUnixUs())
	if readyAt.Before(t0) || readyAt.After(t0.Add(seen)) {
		t.Errorf("ready stamped at %v, want between the connect (%v) and the watcher's READY (+%v)", readyAt, t0, seen)
	}
	if got.GetStatus().GetMainProcessInstanceId() != "inst-1" {
		t.Errorf("stored main_process_instance_id %q, want inst-1 (the session's write was lost)", got.GetStatus().GetMainProcessInstanceId())
	}
}
