package podman

import (
	"context"
	"testing"
	"time"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/drivertest"
)

func TestConformance(t *testing.T) {
	for _, md := range modes() {
		t.Run(md.name, func(t *testing.T) {
			requirePodman(t, md)
			cfg := testConfig(t, md)
			t.Cleanup(func() { checkNoLeaks(t, cfg) })
			drivertest.Suite(t, func(t *testing.T) drivers.Driver {
				d, err := New(t.Context(), cfg)
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				return d
			}, drivertest.Options{Image: testImage, ReadyTimeout: 60 * time.Second})
		})
	}
}

// createReady creates sb, deletes it at cleanup, and waits until it is READY.
func createReady(ctx context.Context, t *testing.T, d *Driver, sb *computev1.DriverSandbox) *computev1.DriverSandbox {
	t.Helper()
	if err := d.Create(ctx, sb); err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() { _, _ = d.Delete(context.Background(), sb.GetId(), sb.GetName()) })
	return waitFor(t, d, sb.GetId(), "READY", func(s *computev1.DriverSandbox) bool { return phase(s) == openshellv1.SandboxPhase_SANDBOX_PHASE_READY })
}

// waitFor polls Get until pred holds.
func waitFor(t *testing.T, d *Driver, id string, what string, pred func(*computev1.DriverSandbox) bool) *computev1.DriverSandbox {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last *computev1.DriverSandbox
	var err error
	for time.Now().Before(deadline) {
		last, err = d.Get(t.Context(), id, "")
		if err == nil && pred(last) {
			return last
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s: last %v, %v", what, last.GetStatus(), err)
	return nil
}

func phase(sb *computev1.DriverSandbox) openshellv1.SandboxPhase {
	return drivers.BackendPhase(sb.GetStatus())
}
