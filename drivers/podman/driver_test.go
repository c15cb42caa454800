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
			}, drivertest.Options{Image: testImage, ReadyTimeout: readyTimeout})
		})
	}
}

// readyTimeout bounds how long a test waits for a sandbox to change state.
const readyTimeout = 60 * time.Second

// createReady creates sb, deletes it at cleanup, and waits until it is READY.
func createReady(ctx context.Context, t *testing.T, d *Driver, sb *computev1.DriverSandbox) *computev1.DriverSandbox {
	t.Helper()
	return drivertest.CreateReady(ctx, t, d, sb, readyTimeout)
}

func phase(sb *computev1.DriverSandbox) openshellv1.SandboxPhase {
	return drivers.BackendPhase(sb.GetStatus())
}
