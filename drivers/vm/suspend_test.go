package vm_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/vm/internal/state"
)

// TestSuspendResume suspends a running VM sandbox (virtio-serial channel): nothing of
// it runs afterwards (no runner, no QEMU) while its memory is on disk; a restarted
// driver re-adopts it as suspended; Start brings back the same guest (the same guest
// boot id, its session reconnected with the same instance secret), faster than the
// cold create.
func TestSuspendResume(t *testing.T) {
	if testing.Short() {
		t.Skip("boots real VMs")
	}
	_, image := vmFixture(t)
	gw := newGatewayStub(t)
	dir := shortDir(t)
	cfg := testConfig(t, dir, gw.addr())
	cfg.Transport = "virtio-serial"
	d := newTestDriver(t, cfg)
	t0 := time.Now()
	id := create(t, d, image)
	first := gw.next(t, id, vmTimeout)
	waitFor(t, d, id, "Ready", ready)
	cold := time.Since(t0)
	rec := record(t, dir, id)
	sbDir := rec.Paths.Dir

	ts := time.Now()
	if err := d.Suspend(t.Context(), id, ""); err != nil {
		t.Fatalf("Suspend: %v", err)
	}
	t.Logf("suspend took %v", time.Since(ts).Round(time.Millisecond))
	sb, err := d.Get(t.Context(), id, "")
	if err != nil {
		t.Fatal(err)
	}
	if ready(sb) || !drivers.StopConfirmed(sb.GetStatus()) {
		t.Fatalf("suspended sandbox status %v: want Ready=False and Suspended=True", sb.GetStatus().GetConditions())
	}
	if c := drivers.FindCondition(sb.GetStatus(), drivers.ConditionSuspended); !strings.Contains(c.GetMessage(), "suspended") {
		t.Fatalf("Suspended condition %v: want the message to say the memory is saved", c)
	}
	if state.SameProcess(rec.VMMPID, rec.VMMStart) || state.SameProcess(rec.RunnerPID, rec.RunnerStart) {
		t.Fatalf("QEMU %d or runner %d still runs while suspended", rec.VMMPID, rec.RunnerPID)
	}
	if n := runnersOf(sbDir); n != 0 {
		t.Fatalf("%d runner processes while suspended", n)
	}
	fi, err := os.Stat(filepath.Join(sbDir, "suspend.state"))
	if err != nil || fi.Size() == 0 {
		t.Fatalf("saved state: %v", err)
	}
	// Suspending again is a no-op; stopping a suspended sandbox too.
	if err := d.Suspend(t.Context(), id, ""); err != nil {
		t.Fatalf("second Suspend: %v", err)
	}

	// A driver restart (the gateway's driver process killed) finds it suspended.
	d.Close()
	d = newTestDriver(t, cfg)
	defer d.Close()
	defer d.Delete(context.Background(), id, "")
	sb, err = d.Get(t.Context(), id, "")
	if err != nil || ready(sb) || !strings.Contains(drivers.FindCondition(sb.GetStatus(), drivers.ConditionSuspended).GetMessage(), "suspended") {
		t.Fatalf("re-adopted suspended sandbox: %v %v", sb.GetStatus().GetConditions(), err)
	}

	tr := time.Now()
	if err := d.Start(t.Context(), id, ""); err != nil {
		t.Fatalf("Start (resume): %v", err)
	}
	again := gw.next(t, id, vmTimeout)
	waitFor(t, d, id, "Ready after resume", ready)
	resume := time.Since(tr)
	t.Logf("cold create→Ready %v; resume→Ready %v (%.2f×); state file %d KiB", cold.Round(time.Millisecond), resume.Round(time.Millisecond), resume.Seconds()/cold.Seconds(), fi.Size()>>10)
	if again.BootID != first.BootID {
		t.Fatalf("guest boot id %q after resume, was %q: the guest rebooted instead of resuming", again.BootID, first.BootID)
	}
	if again.Conn <= first.Conn {
		t.Fatalf("report after resume is connection %d, first was %d: want the same guest program reconnecting", again.Conn, first.Conn)
	}
	if _, err := os.Stat(filepath.Join(sbDir, "suspend.state")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("saved state still there after resume (could be restored over a newer disk): %v", err)
	}
	if resume >= cold {
		t.Fatalf("resume→Ready %v is not faster than cold create→Ready %v", resume, cold)
	}
	// Stopped (not suspended) sandboxes are refused.
	if err := d.Stop(t.Context(), id, ""); err != nil {
		t.Fatal(err)
	}
	if err := d.Suspend(t.Context(), id, ""); !errors.Is(err, drivers.ErrFailedPrecondition) || !strings.Contains(err.Error(), "start it") {
		t.Fatalf("Suspend of a stopped sandbox: %v; want FailedPrecondition saying to start it", err)
	}
}

// TestSuspendRefused: a VM whose channel QEMU cannot migrate (vhost-user-vsock, this
// host's default) is refused with FailedPrecondition naming the fix, and keeps running.
func TestSuspendRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("boots real VMs")
	}
	_, image := vmFixture(t)
	gw := newGatewayStub(t)
	dir := shortDir(t)
	cfg := testConfig(t, dir, gw.addr())
	cfg.Transport = "vhost-user-vsock"
	d := newTestDriver(t, cfg)
	defer d.Close()
	id := create(t, d, image)
	defer d.Delete(context.Background(), id, "")
	if err := d.Suspend(t.Context(), id, ""); !errors.Is(err, drivers.ErrFailedPrecondition) {
		t.Fatalf("Suspend while starting: %v; want FailedPrecondition", err)
	}
	gw.next(t, id, vmTimeout)
	waitFor(t, d, id, "Ready", ready)
	err := d.Suspend(t.Context(), id, "")
	if !errors.Is(err, drivers.ErrFailedPrecondition) || !strings.Contains(err.Error(), "virtio-serial") {
		t.Fatalf("Suspend over vhost-user-vsock: %v; want FailedPrecondition naming virtio-serial", err)
	}
	sb := waitFor(t, d, id, "still Ready", ready)
	if drivers.StopConfirmed(sb.GetStatus()) {
		t.Fatalf("refused suspend left the sandbox stopped: %v", sb.GetStatus().GetConditions())
	}
	if _, err := d.Get(t.Context(), "no-such-sandbox", ""); !errors.Is(err, drivers.ErrNotFound) {
		t.Fatal(err)
	}
	if err := d.Suspend(t.Context(), "no-such-sandbox", ""); !errors.Is(err, drivers.ErrNotFound) {
		t.Fatalf("Suspend of an unknown sandbox: %v; want NotFound", err)
	}
}
