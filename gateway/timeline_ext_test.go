package gateway_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/gateway"
)

// TestCreateTimeline: a create's timeline starts when the gateway got it and ends
// when the sandbox became Ready (backend ready and the session up, not before), each
// step's took adding up to the total; it is kept as it was after the session goes
// and comes back.
func TestCreateTimeline(t *testing.T) {
	e := startEnv(t, t.TempDir(), drivertest.NewMemDriver())
	before := time.Now().UnixMicro()
	sb := e.create("alpha")
	id := sb.GetMetadata().GetId()
	tl := sb.GetStatus().GetCreateTimeline()
	if len(tl) == 0 || tl[0].GetPhase() != "received" || tl[0].GetAtUnixUs() < before {
		t.Fatalf("timeline right after create = %v, want it to start with %q at ≥ %d", tl, "received", before)
	}
	time.Sleep(50 * time.Millisecond) // the backend is ready after 20 ms; the session is not
	if got := e.get("alpha").GetStatus().GetCreateTimeline(); len(got) > 0 && got[len(got)-1].GetPhase() == "ready" {
		t.Fatalf("timeline finished without a session: %v", got)
	}
	connected := time.Now().UnixMicro()
	sup := e.connectSupervisor(id, "inst-1")
	e.waitPhase("alpha", phaseReady)
	// Seen Ready a moment before the session's write lands, "ready" reads as now;
	// once written it stays as it was.
	time.Sleep(100 * time.Millisecond)
	tl = e.get("alpha").GetStatus().GetCreateTimeline()
	if len(tl) < 2 || tl[len(tl)-1].GetPhase() != "ready" {
		t.Fatalf("timeline at Ready = %v, want it to end with %q", tl, "ready")
	}
	last := tl[len(tl)-1]
	if last.GetAtUnixUs() < connected {
		t.Errorf("ready at %d, before the session connected at %d", last.GetAtUnixUs(), connected)
	}
	var sum int64
	for i, s := range tl {
		if i > 0 && s.GetAtUnixUs() < tl[i-1].GetAtUnixUs() {
			t.Errorf("step %d (%s) before the one it follows: %v", i, s.GetPhase(), tl)
		}
		sum += s.GetTookUs()
	}
	if total := last.GetAtUnixUs() - tl[0].GetAtUnixUs(); sum != total || total <= 0 {
		t.Errorf("steps took %d µs in all, total %d µs", sum, total)
	}
	sup.close()
	e.waitPhase("alpha", phaseProvisioning)
	e.connectSupervisor(id, "inst-1")
	again := e.waitPhase("alpha", phaseReady).GetStatus().GetCreateTimeline()
	if len(again) != len(tl) || !proto.Equal(again[len(again)-1], last) {
		t.Errorf("timeline after the session came back = %v, want the create's %v", again, tl)
	}
}

// staleGetDriver answers Get with the status a sandbox had when Create returned,
// after its event stream has already told the gateway the newer one (what a warm
// pool's claim does: its VM reports running tens of ms after Create).
type staleGetDriver struct {
	*drivertest.MemDriver
	mu    sync.Mutex
	stale map[string]*computev1.DriverSandbox
}

func (d *staleGetDriver) Create(ctx context.Context, sb *computev1.DriverSandbox) error {
	if err := d.MemDriver.Create(ctx, sb); err != nil {
		return err
	}
	ds, err := d.MemDriver.Get(ctx, sb.GetId(), sb.GetName())
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.stale[sb.GetId()] = proto.Clone(ds).(*computev1.DriverSandbox)
	d.mu.Unlock()
	return nil
}

func (d *staleGetDriver) Get(ctx context.Context, id, name string) (*computev1.DriverSandbox, error) {
	d.mu.Lock()
	ds := d.stale[id]
	delete(d.stale, id)
	d.mu.Unlock()
	if ds == nil {
		return d.MemDriver.Get(ctx, id, name)
	}
	time.Sleep(300 * time.Millisecond) // the Ready event (20 ms) is in the gateway by now
	return ds, nil
}

// TestCreateKeepsNewerDriverStatus: the observation CreateSandbox picks up after the
// driver's Create does not overwrite a newer one its event stream delivered
// meanwhile; with reconciles an hour apart, a lost update would keep the sandbox
// from Ready.
func TestCreateKeepsNewerDriverStatus(t *testing.T) {
	mem := drivertest.NewMemDriver()
	drv := &staleGetDriver{MemDriver: mem, stale: map[string]*computev1.DriverSandbox{}}
	e := startEnvWith(t, t.TempDir(), mem, time.Hour, func(o *gateway.Options) { o.Driver = drv })
	sb := e.create("fast")
	e.connectSupervisor(sb.GetMetadata().GetId(), "inst-1")
	e.waitPhase("fast", phaseReady)
}
