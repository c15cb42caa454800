package gateway_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/gateway"
)

// suspendingDriver is the in-memory driver with a Suspend that stops the workload
// and counts the calls (a test double of a driver that can suspend).
type suspendingDriver struct {
	*drivertest.MemDriver
	suspends atomic.Int32
}

var _ drivers.Suspender = (*suspendingDriver)(nil)

func (d *suspendingDriver) Suspend(ctx context.Context, id, name string) error {
	d.suspends.Add(1)
	return d.Stop(ctx, id, name)
}

// TestStopSuspend: StopSandbox with suspend goes to the driver's Suspend (the sandbox is
// then STOPPED; asking again reaches the driver, which knows whether it is suspended);
// a driver that cannot suspend is refused with FailedPrecondition naming the driver and
// the fix, and the sandbox stays READY.
func TestStopSuspend(t *testing.T) {
	drv := &suspendingDriver{MemDriver: drivertest.NewMemDriver()}
	e := startEnvWith(t, t.TempDir(), drv.MemDriver, 200*time.Millisecond, func(o *gateway.Options) { o.Driver = drv })
	id := e.create("alpha").GetMetadata().GetId()
	e.connectSupervisor(id, "i1")
	e.waitPhase("alpha", phaseReady)
	resp, err := e.user.StopSandbox(t.Context(), &openshellv1.StopSandboxRequest{Name: "alpha", Suspend: true})
	if err != nil || resp.GetSandbox().GetStatus().GetPhase() != phaseStopped {
		t.Fatalf("suspend = %v, %v", resp.GetSandbox().GetStatus().GetPhase(), err)
	}
	if _, err := e.user.StopSandbox(t.Context(), &openshellv1.StopSandboxRequest{Name: "alpha", Suspend: true}); err != nil {
		t.Fatal(err)
	}
	if n := drv.suspends.Load(); n != 2 {
		t.Fatalf("driver Suspend called %d times, want 2", n)
	}

	plain := startEnv(t, t.TempDir(), drivertest.NewMemDriver())
	pid := plain.create("beta").GetMetadata().GetId()
	plain.connectSupervisor(pid, "i1")
	plain.waitPhase("beta", phaseReady)
	_, err = plain.user.StopSandbox(t.Context(), &openshellv1.StopSandboxRequest{Name: "beta", Suspend: true})
	wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(err.Error(), "cannot suspend") || !strings.Contains(err.Error(), "without --suspend") {
		t.Fatalf("refusal %q: want it to say the driver cannot suspend and what to do", err)
	}
	plain.waitPhase("beta", phaseReady)
}
