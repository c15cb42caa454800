package drivertest

import (
	"context"
	"testing"
	"time"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
)

// WaitFor polls d.Get(id) every 100 ms until pred holds and returns that
// observation; after timeout it fails t with the last one seen.
func WaitFor(t testing.TB, d drivers.Driver, id, what string, timeout time.Duration, pred func(*computev1.DriverSandbox) bool) *computev1.DriverSandbox {
	t.Helper()
	deadline := time.Now().Add(timeout)
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

// CreateReady creates sb, deletes it at cleanup, and waits up to timeout until it
// is READY.
func CreateReady(ctx context.Context, t testing.TB, d drivers.Driver, sb *computev1.DriverSandbox, timeout time.Duration) *computev1.DriverSandbox {
	t.Helper()
	if err := d.Create(ctx, sb); err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() { _, _ = d.Delete(context.Background(), sb.GetId(), sb.GetName()) })
	return WaitFor(t, d, sb.GetId(), "READY", timeout, isReady)
}
