package drivertest_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/drivertest"
)

// broken wraps MemDriver with one deliberate contract violation.
type broken struct {
	*drivertest.MemDriver
	fault string
}

func (b *broken) ValidateCreate(ctx context.Context, sb *computev1.DriverSandbox) error {
	if b.fault == "accepts-bad-input" {
		return nil
	}
	return b.MemDriver.ValidateCreate(ctx, sb)
}

func (b *broken) Create(ctx context.Context, sb *computev1.DriverSandbox) error {
	err := b.MemDriver.Create(ctx, sb)
	if b.fault == "create-twice-ok" && errors.Is(err, drivers.ErrAlreadyExists) {
		return nil
	}
	return err
}

func (b *broken) Get(ctx context.Context, id, name string) (*computev1.DriverSandbox, error) {
	sb, err := b.MemDriver.Get(ctx, id, name)
	if b.fault == "echo-token" && err == nil {
		sb.Spec.SandboxToken = b.Spec(id).GetSandboxToken()
	}
	return sb, err
}

func (b *broken) Watch(ctx context.Context) (<-chan *computev1.WatchSandboxesEvent, error) {
	in, err := b.MemDriver.Watch(ctx)
	if err != nil || b.fault != "no-delete-event" {
		return in, err
	}
	out := make(chan *computev1.WatchSandboxesEvent)
	go func() {
		defer close(out)
		for ev := range in {
			if ev.GetDeleted() != nil {
				continue
			}
			select {
			case out <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// TestBrokenDriverHelper is run in a child process by
// TestSuiteCatchesBrokenDrivers; it must fail there.
func TestBrokenDriverHelper(t *testing.T) {
	fault := os.Getenv("DRIVERTEST_FAULT")
	if fault == "" {
		t.Skip("only run as a child of TestSuiteCatchesBrokenDrivers")
	}
	drivertest.Suite(t, func(t *testing.T) drivers.Driver {
		m := drivertest.NewMemDriver()
		if fault == "never-ready" {
			m.SetReadyDelay(-1)
		}
		return &broken{MemDriver: m, fault: fault}
	}, drivertest.Options{ReadyTimeout: 500 * time.Millisecond})
}

// The suite must actually fail drivers that break the contract.
func TestSuiteCatchesBrokenDrivers(t *testing.T) {
	for fault, want := range map[string]string{
		"accepts-bad-input": "want ErrInvalidArgument",
		"create-twice-ok":   "want ErrAlreadyExists",
		"echo-token":        "echoes the sandbox token",
		"no-delete-event":   "no deleted event",
		"never-ready":       "no Ready=True observation",
	} {
		t.Run(fault, func(t *testing.T) {
			cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestBrokenDriverHelper$", "-test.v", "-test.count=1")
			cmd.Env = append(os.Environ(), "DRIVERTEST_FAULT="+fault)
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) {
				t.Fatalf("suite passed (or could not run) for a driver with fault %s: %v\n%s", fault, err, out)
			}
			if !strings.Contains(string(out), want) {
				t.Errorf("suite failed for %s but without %q:\n%s", fault, want, out)
			}
		})
	}
}
