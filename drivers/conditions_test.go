package drivers_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers"
)

func cond(typ, status, reason string) *computev1.DriverCondition {
	return &computev1.DriverCondition{Type: typ, Status: status, Reason: reason}
}

func TestBackendPhase(t *testing.T) {
	const (
		unknown      = openshellv1.SandboxPhase_SANDBOX_PHASE_UNKNOWN
		provisioning = openshellv1.SandboxPhase_SANDBOX_PHASE_PROVISIONING
		ready        = openshellv1.SandboxPhase_SANDBOX_PHASE_READY
		failed       = openshellv1.SandboxPhase_SANDBOX_PHASE_ERROR
		deleting     = openshellv1.SandboxPhase_SANDBOX_PHASE_DELETING
		stopped      = openshellv1.SandboxPhase_SANDBOX_PHASE_STOPPED
	)
	for _, tc := range []struct {
		name string
		st   *computev1.DriverSandboxStatus
		want openshellv1.SandboxPhase
	}{
		{"no status", nil, unknown},
		{"empty status", &computev1.DriverSandboxStatus{}, provisioning},
		{"deleting wins over ready", &computev1.DriverSandboxStatus{Deleting: true, Conditions: []*computev1.DriverCondition{cond("Ready", "True", "")}}, deleting},
		{"deleting wins over suspended", &computev1.DriverSandboxStatus{Deleting: true, Conditions: []*computev1.DriverCondition{cond("Suspended", "True", "")}}, deleting},
		{"suspended true", &computev1.DriverSandboxStatus{Conditions: []*computev1.DriverCondition{cond("Ready", "True", ""), cond("Suspended", "True", "")}}, stopped},
		{"suspended case-insensitive", &computev1.DriverSandboxStatus{Conditions: []*computev1.DriverCondition{cond("suspended", "true", "")}}, stopped},
		{"suspended false ignored", &computev1.DriverSandboxStatus{Conditions: []*computev1.DriverCondition{cond("Suspended", "False", ""), cond("Ready", "True", "")}}, ready},
		{"ready true", &computev1.DriverSandboxStatus{Conditions: []*computev1.DriverCondition{cond("Ready", "True", "Running")}}, ready},
		{"ready status case-insensitive", &computev1.DriverSandboxStatus{Conditions: []*computev1.DriverCondition{cond("Ready", "TRUE", "")}}, ready},
		{"ready type is case-sensitive", &computev1.DriverSandboxStatus{Conditions: []*computev1.DriverCondition{cond("ready", "True", "")}}, provisioning},
		{"first ready condition counts", &computev1.DriverSandboxStatus{Conditions: []*computev1.DriverCondition{cond("Ready", "False", "Starting"), cond("Ready", "True", "")}}, provisioning},
		{"ready false terminal", &computev1.DriverSandboxStatus{Conditions: []*computev1.DriverCondition{cond("Ready", "False", "ImagePullFailed")}}, failed},
		{"ready false empty reason is terminal", &computev1.DriverSandboxStatus{Conditions: []*computev1.DriverCondition{cond("Ready", "False", "")}}, failed},
		{"ready false main process exited", &computev1.DriverSandboxStatus{Conditions: []*computev1.DriverCondition{cond("Ready", "False", drivers.ReasonMainProcessExited)}}, failed},
		{"ready false transient", &computev1.DriverSandboxStatus{Conditions: []*computev1.DriverCondition{cond("Ready", "False", "ContainerStarting")}}, provisioning},
		{"ready false transient case-insensitive", &computev1.DriverSandboxStatus{Conditions: []*computev1.DriverCondition{cond("Ready", "False", "supervisornotconnected")}}, provisioning},
		{"ready unknown", &computev1.DriverSandboxStatus{Conditions: []*computev1.DriverCondition{cond("Ready", "Unknown", "Whatever")}}, provisioning},
		{"other conditions only", &computev1.DriverSandboxStatus{Conditions: []*computev1.DriverCondition{cond("PodScheduled", "False", "Unschedulable")}}, provisioning},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := drivers.BackendPhase(tc.st); got != tc.want {
				t.Errorf("BackendPhase = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestIsTransientReason(t *testing.T) {
	for _, r := range []string{"ReconcilerError", "DependenciesNotReady", "SupervisorNotConnected", "Starting", "ContainerStarting", "ContainerCreated", "HealthCheckStarting", "InspectFailed", "inspectfailed"} {
		if !drivers.IsTransientReason(r) {
			t.Errorf("IsTransientReason(%q) = false, want true", r)
		}
	}
	for _, r := range []string{"", "MainProcessExited", "ContainerExited", "Starting ", "ImagePullBackOff"} {
		if drivers.IsTransientReason(r) {
			t.Errorf("IsTransientReason(%q) = true, want false", r)
		}
	}
}

func TestReadyCondition(t *testing.T) {
	c := drivers.ReadyCondition(true, drivers.ReasonRunning, "up")
	if c.GetType() != "Ready" || c.GetStatus() != "True" || c.GetReason() != "Running" || c.GetMessage() != "up" {
		t.Errorf("ReadyCondition(true) = %v", c)
	}
	if _, err := time.Parse(time.RFC3339, c.GetLastTransitionTime()); err != nil {
		t.Errorf("last_transition_time %q: %v", c.GetLastTransitionTime(), err)
	}
	if c := drivers.ReadyCondition(false, "x", ""); c.GetStatus() != "False" {
		t.Errorf("ReadyCondition(false).status = %q", c.GetStatus())
	}
	st := &computev1.DriverSandboxStatus{Conditions: []*computev1.DriverCondition{drivers.SuspendedCondition(true, drivers.ReasonStopped, "")}}
	if got := drivers.BackendPhase(st); got != openshellv1.SandboxPhase_SANDBOX_PHASE_STOPPED {
		t.Errorf("SuspendedCondition(true) gives phase %v", got)
	}
}

func TestStopConfirmed(t *testing.T) {
	for _, tc := range []struct {
		name string
		st   *computev1.DriverSandboxStatus
		want bool
	}{
		{"nil", nil, false},
		{"suspended", &computev1.DriverSandboxStatus{Conditions: []*computev1.DriverCondition{cond("Suspended", "True", "")}}, true},
		{"container exited", &computev1.DriverSandboxStatus{Conditions: []*computev1.DriverCondition{cond("Ready", "False", "ContainerExited")}}, true},
		{"container stopped", &computev1.DriverSandboxStatus{Conditions: []*computev1.DriverCondition{cond("Ready", "False", "ContainerStopped")}}, true},
		{"running", &computev1.DriverSandboxStatus{Conditions: []*computev1.DriverCondition{cond("Ready", "True", "ContainerStopped")}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := drivers.StopConfirmed(tc.st); got != tc.want {
				t.Errorf("StopConfirmed = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestSentinelsWrap(t *testing.T) {
	err := fmt.Errorf("sandbox %s: %w", "abc", drivers.ErrNotFound)
	if !errors.Is(err, drivers.ErrNotFound) || errors.Is(err, drivers.ErrAlreadyExists) {
		t.Errorf("wrapped sentinel not matched correctly: %v", err)
	}
}

func FuzzBackendPhase(f *testing.F) {
	f.Add("Ready", "False", "Starting", false)
	f.Add("Suspended", "true", "", false)
	f.Fuzz(func(t *testing.T, typ, status, reason string, deleting bool) {
		st := &computev1.DriverSandboxStatus{Deleting: deleting, Conditions: []*computev1.DriverCondition{cond(typ, status, reason)}}
		p := drivers.BackendPhase(st)
		if deleting && p != openshellv1.SandboxPhase_SANDBOX_PHASE_DELETING {
			t.Fatalf("deleting status gave %v", p)
		}
		if p == openshellv1.SandboxPhase_SANDBOX_PHASE_UNKNOWN {
			t.Fatalf("non-nil status gave UNKNOWN")
		}
	})
}
