package drivertest_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/drivertest"
)

func TestMemDriverSuite(t *testing.T) {
	drivertest.Suite(t, func(t *testing.T) drivers.Driver {
		return drivertest.NewMemDriver()
	}, drivertest.Options{Image: "mem.invalid/img", ReadyTimeout: 5 * time.Second})
}

func TestMemDriverHooks(t *testing.T) {
	ctx := t.Context()
	m := drivertest.NewMemDriver()
	t.Cleanup(func() { _ = m.Close() })
	m.SetReadyDelay(-1) // stay Starting until told otherwise

	events, err := m.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id, name := drivertest.NewIDs()
	if err := m.Create(ctx, drivertest.DefaultSandbox(id, name, "img")); err != nil {
		t.Fatal(err)
	}
	if got := m.Spec(id).GetSandboxToken(); got != drivertest.SuiteToken {
		t.Errorf("Spec(%s).sandbox_token = %q, want the token passed to Create", id, got)
	}
	next := func() *computev1.WatchSandboxesEvent {
		t.Helper()
		select {
		case ev := <-events:
			return ev
		case <-time.After(5 * time.Second):
			t.Fatal("no watch event")
			return nil
		}
	}
	if ev := next(); drivers.BackendPhase(ev.GetSandbox().GetSandbox().GetStatus()) != openshellv1.SandboxPhase_SANDBOX_PHASE_PROVISIONING {
		t.Errorf("first event %v, want a provisioning observation", ev)
	}

	// A crash reported through SetConditions surfaces as phase ERROR.
	if err := m.SetConditions(id, drivers.ReadyCondition(false, drivers.ReasonContainerExited, "exit 1")); err != nil {
		t.Fatal(err)
	}
	if ev := next(); drivers.BackendPhase(ev.GetSandbox().GetSandbox().GetStatus()) != openshellv1.SandboxPhase_SANDBOX_PHASE_ERROR {
		t.Errorf("after crash: %v, want an error observation", ev)
	}

	// Emitted platform events reach watchers unchanged.
	m.Emit(&computev1.WatchSandboxesEvent{Payload: &computev1.WatchSandboxesEvent_PlatformEvent{
		PlatformEvent: &computev1.WatchSandboxesPlatformEvent{SandboxId: id, Event: &computev1.DriverPlatformEvent{Reason: "Pulled"}},
	}})
	if ev := next(); ev.GetPlatformEvent().GetEvent().GetReason() != "Pulled" {
		t.Errorf("emitted event came back as %v", ev)
	}

	// Injected failures are returned as given until cleared.
	boom := fmt.Errorf("injected: %w", drivers.ErrUnavailable)
	m.FailOn(drivertest.OpGet, boom)
	if _, err := m.Get(ctx, id, name); !errors.Is(err, drivers.ErrUnavailable) {
		t.Errorf("Get with injected failure = %v", err)
	}
	m.FailOn(drivertest.OpGet, nil)
	if _, err := m.Get(ctx, id, name); err != nil {
		t.Errorf("Get after clearing the failure: %v", err)
	}

	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case _, ok := <-events:
		for ok {
			_, ok = <-events
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watch not closed by Close")
	}
	if _, err := m.List(ctx); !errors.Is(err, drivers.ErrUnavailable) {
		t.Errorf("List after Close = %v, want ErrUnavailable", err)
	}
}
