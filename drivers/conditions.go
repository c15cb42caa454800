package drivers

import (
	"strings"
	"time"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/api/openshellv1"
)

// Condition types the gateway's phase derivation reads.
const (
	// ConditionReady is matched exactly (case-sensitive), as upstream does.
	ConditionReady = "Ready"
	// ConditionSuspended is matched case-insensitively; True means stopped.
	ConditionSuspended = "Suspended"
)

// Condition statuses (compared case-insensitively by readers).
const (
	StatusTrue    = "True"
	StatusFalse   = "False"
	StatusUnknown = "Unknown"
)

// Reasons drivers and the gateway put on conditions.
const (
	// Transient reasons: Ready=False with one of these keeps PROVISIONING.
	ReasonReconcilerError        = "ReconcilerError"
	ReasonDependenciesNotReady   = "DependenciesNotReady"
	ReasonSupervisorNotConnected = "SupervisorNotConnected"
	ReasonStarting               = "Starting"
	ReasonContainerStarting      = "ContainerStarting"
	ReasonContainerCreated       = "ContainerCreated"
	ReasonHealthCheckStarting    = "HealthCheckStarting"
	ReasonInspectFailed          = "InspectFailed"

	// Terminal or informational reasons.
	ReasonDependenciesReady = "DependenciesReady" // Ready=True set by the gateway
	ReasonRunning           = "Running"           // Ready=True set by a driver
	ReasonMainProcessExited = "MainProcessExited" // Ready=False, phase ERROR
	// ReasonContainerExited / ReasonContainerStopped on a False condition
	// confirm a requested stop (see StopConfirmed).
	ReasonContainerExited  = "ContainerExited"
	ReasonContainerStopped = "ContainerStopped"
	ReasonStopped          = "Stopped" // Suspended=True set by a driver
)

var transientReasons = []string{
	ReasonReconcilerError,
	ReasonDependenciesNotReady,
	ReasonSupervisorNotConnected,
	ReasonStarting,
	ReasonContainerStarting,
	ReasonContainerCreated,
	ReasonHealthCheckStarting,
	ReasonInspectFailed,
}

// IsTransientReason reports whether a Ready=False reason means "not ready
// yet" rather than a terminal failure (case-insensitive).
func IsTransientReason(reason string) bool {
	for _, r := range transientReasons {
		if strings.EqualFold(r, reason) {
			return true
		}
	}
	return false
}

// ReadyCondition builds a Ready condition stamped with the current time.
func ReadyCondition(status bool, reason, message string) *computev1.DriverCondition {
	return newCondition(ConditionReady, status, reason, message)
}

// SuspendedCondition builds a Suspended condition (True = the sandbox is
// stopped but keeps its state) stamped with the current time.
func SuspendedCondition(status bool, reason, message string) *computev1.DriverCondition {
	return newCondition(ConditionSuspended, status, reason, message)
}

func newCondition(typ string, status bool, reason, message string) *computev1.DriverCondition {
	s := StatusFalse
	if status {
		s = StatusTrue
	}
	return &computev1.DriverCondition{
		Type:               typ,
		Status:             s,
		Reason:             reason,
		Message:            message,
		LastTransitionTime: time.Now().UTC().Format(time.RFC3339),
	}
}

// FindCondition returns the first condition of type typ (exact match), or nil.
func FindCondition(st *computev1.DriverSandboxStatus, typ string) *computev1.DriverCondition {
	for _, c := range st.GetConditions() {
		if c.GetType() == typ {
			return c
		}
	}
	return nil
}

// BackendPhase derives the backend phase from a driver observation, in the
// upstream order: no status → UNKNOWN; deleting → DELETING; Suspended=True →
// STOPPED; first Ready condition True → READY, False with a non-transient
// reason → ERROR; anything else → PROVISIONING. The gateway then turns READY
// into PROVISIONING until the supervisor session is live.
func BackendPhase(st *computev1.DriverSandboxStatus) openshellv1.SandboxPhase {
	if st == nil {
		return openshellv1.SandboxPhase_SANDBOX_PHASE_UNKNOWN
	}
	if st.GetDeleting() {
		return openshellv1.SandboxPhase_SANDBOX_PHASE_DELETING
	}
	for _, c := range st.GetConditions() {
		if strings.EqualFold(c.GetType(), ConditionSuspended) && strings.EqualFold(c.GetStatus(), StatusTrue) {
			return openshellv1.SandboxPhase_SANDBOX_PHASE_STOPPED
		}
	}
	ready := FindCondition(st, ConditionReady)
	switch {
	case ready == nil:
		return openshellv1.SandboxPhase_SANDBOX_PHASE_PROVISIONING
	case strings.EqualFold(ready.GetStatus(), StatusTrue):
		return openshellv1.SandboxPhase_SANDBOX_PHASE_READY
	case strings.EqualFold(ready.GetStatus(), StatusFalse) && !IsTransientReason(ready.GetReason()):
		return openshellv1.SandboxPhase_SANDBOX_PHASE_ERROR
	default:
		return openshellv1.SandboxPhase_SANDBOX_PHASE_PROVISIONING
	}
}

// StopConfirmed reports whether an observation confirms a requested stop:
// the backend phase is STOPPED, or some condition is False with reason
// ContainerExited or ContainerStopped.
func StopConfirmed(st *computev1.DriverSandboxStatus) bool {
	if BackendPhase(st) == openshellv1.SandboxPhase_SANDBOX_PHASE_STOPPED {
		return true
	}
	for _, c := range st.GetConditions() {
		if strings.EqualFold(c.GetStatus(), StatusFalse) &&
			(strings.EqualFold(c.GetReason(), ReasonContainerExited) || strings.EqualFold(c.GetReason(), ReasonContainerStopped)) {
			return true
		}
	}
	return false
}
