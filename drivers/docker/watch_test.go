package docker

import (
	"context"
	"testing"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers/containers"
	"github.com/openshell/openshell/drivers/drivertest"
)

// Resync repairs what missed events left wrong: a sandbox the watcher believes in but
// Docker no longer has is reported deleted, one whose state changed unseen is re-sent,
// one already reported identically is not repeated.
func TestWatchResyncRepairsMissedEvents(t *testing.T) {
	requireDocker(t)
	d := newTestDriver(t, withStandin(testConfig(t)))
	ctx := t.Context()
	id, name := drivertest.NewIDs()
	if err := d.Create(ctx, drivertest.DefaultSandbox(id, name, testImage)); err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() { _, _ = d.Delete(context.Background(), id, name) })
	cur, err := d.Get(ctx, id, "")
	if err != nil {
		t.Fatal(err)
	}

	collect := func(w *containers.Watch) []*computev1.WatchSandboxesEvent {
		go func() { w.Resync(ctx); close(w.Out) }()
		var evs []*computev1.WatchSandboxesEvent
		for ev := range w.Out {
			evs = append(evs, ev)
		}
		return evs
	}
	w := containers.NewWatch(d, d.log, DriverName)
	w.Known = map[string]string{"ghost-id": "x", id: "stale"}
	evs := collect(w)
	var ghostDeleted, resent bool
	for _, ev := range evs {
		if ev.GetDeleted().GetSandboxId() == "ghost-id" {
			ghostDeleted = true
		}
		if ev.GetSandbox().GetSandbox().GetId() == id {
			resent = true
		}
	}
	if !ghostDeleted || !resent {
		t.Errorf("resync events %v: want ghost-id deleted and %s re-sent", evs, id)
	}

	w = containers.NewWatch(d, d.log, DriverName)
	w.Known = map[string]string{id: containers.Fingerprint(cur)}
	if evs := collect(w); len(evs) != 0 {
		t.Errorf("resync with nothing changed sent %v", evs)
	}
}
