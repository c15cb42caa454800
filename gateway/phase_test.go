package gateway

import (
	"testing"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers"
)

func TestDerivePhase(t *testing.T) {
	ready := &computev1.DriverSandboxStatus{Conditions: []*computev1.DriverCondition{drivers.ReadyCondition(true, drivers.ReasonRunning, "")}}
	starting := &computev1.DriverSandboxStatus{Conditions: []*computev1.DriverCondition{drivers.ReadyCondition(false, drivers.ReasonStarting, "")}}
	failed := &computev1.DriverSandboxStatus{Conditions: []*computev1.DriverCondition{drivers.ReadyCondition(false, "ImagePullFailed", "")}}
	suspended := &computev1.DriverSandboxStatus{Conditions: []*computev1.DriverCondition{drivers.SuspendedCondition(true, drivers.ReasonStopped, "")}}
	exited := &computev1.DriverSandboxStatus{Conditions: []*computev1.DriverCondition{drivers.ReadyCondition(false, drivers.ReasonContainerExited, "")}}
	P := openshellv1.SandboxPhase_SANDBOX_PHASE_PROVISIONING
	R := openshellv1.SandboxPhase_SANDBOX_PHASE_READY
	E := openshellv1.SandboxPhase_SANDBOX_PHASE_ERROR
	tests := []struct {
		name       string
		in         phaseInput
		want       openshellv1.SandboxPhase
		wantReason string
	}{
		{"no observation", phaseInput{}, P, ""},
		{"no observation but session", phaseInput{connected: true}, P, ""},
		{"backend starting", phaseInput{backend: starting, connected: true}, P, ""},
		{"backend ready, no session", phaseInput{backend: ready}, P, drivers.ReasonSupervisorNotConnected},
		{"backend ready and session", phaseInput{backend: ready, connected: true}, R, drivers.ReasonDependenciesReady},
		{"backend failed", phaseInput{backend: failed, connected: true}, E, ""},
		{"backend suspended", phaseInput{backend: suspended}, openshellv1.SandboxPhase_SANDBOX_PHASE_STOPPED, ""},
		{"deleting wins", phaseInput{backend: ready, connected: true, intent: intentDeleting, exited: true}, openshellv1.SandboxPhase_SANDBOX_PHASE_DELETING, ""},
		{"create failed", phaseInput{failureReason: reasonCreateFailed}, E, reasonCreateFailed},
		{"stopping unconfirmed", phaseInput{backend: ready, intent: intentStopping}, openshellv1.SandboxPhase_SANDBOX_PHASE_STOPPING, ""},
		{"stopping confirmed by ContainerExited", phaseInput{backend: exited, intent: intentStopping}, openshellv1.SandboxPhase_SANDBOX_PHASE_STOPPED, ""},
		{"stopped", phaseInput{backend: ready, intent: intentStopped}, openshellv1.SandboxPhase_SANDBOX_PHASE_STOPPED, ""},
		{"starting from suspended", phaseInput{backend: suspended, intent: intentStarting}, openshellv1.SandboxPhase_SANDBOX_PHASE_STARTING, ""},
		{"starting, backend ready, no session", phaseInput{backend: ready, intent: intentStarting}, openshellv1.SandboxPhase_SANDBOX_PHASE_STARTING, ""},
		{"starting done", phaseInput{backend: ready, intent: intentStarting, connected: true}, R, drivers.ReasonDependenciesReady},
		{"main process exited", phaseInput{backend: ready, connected: true, exited: true}, E, drivers.ReasonMainProcessExited},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, cond := derivePhase(tc.in)
			if got != tc.want {
				t.Errorf("phase = %v, want %v", got, tc.want)
			}
			if tc.wantReason != "" && cond.GetReason() != tc.wantReason {
				t.Errorf("ready reason = %q, want %q", cond.GetReason(), tc.wantReason)
			}
		})
	}
}

func TestKeepTransitionTime(t *testing.T) {
	stored := []*openshellv1.SandboxCondition{{Type: "Ready", Status: "False", Reason: drivers.ReasonSupervisorNotConnected, LastTransitionTime: "2020-01-01T00:00:00Z"}}
	same := readyCond(false, drivers.ReasonSupervisorNotConnected, "x")
	keepTransitionTime(stored, same)
	if same.LastTransitionTime != "2020-01-01T00:00:00Z" {
		t.Errorf("unchanged condition got a new time %s", same.LastTransitionTime)
	}
	changed := readyCond(true, drivers.ReasonDependenciesReady, "x")
	keepTransitionTime(stored, changed)
	if changed.LastTransitionTime == "2020-01-01T00:00:00Z" {
		t.Error("a changed condition kept the old time")
	}
}
