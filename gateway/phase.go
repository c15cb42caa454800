package gateway

import (
	"time"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers"
)

// Gateway-set reasons beyond the drivers vocabulary.
const (
	reasonCreateFailed = "CreateFailed"
	reasonBackendGone  = "BackendGone"
)

type phaseInput struct {
	backend        *computev1.DriverSandboxStatus
	intent         string
	exited         bool
	failureReason  string
	failureMessage string
	connected      bool
}

// derivePhase computes the public phase and the gateway's Ready condition (nil = keep
// the driver's). Order matters: deletion, gateway-side failure, the stop flow, a main
// process exit, then the driver's backend phase combined with the session state —
// READY only when the backend is ready AND a supervisor session is live.
func derivePhase(in phaseInput) (openshellv1.SandboxPhase, *openshellv1.SandboxCondition) {
	const (
		provisioning = openshellv1.SandboxPhase_SANDBOX_PHASE_PROVISIONING
		ready        = openshellv1.SandboxPhase_SANDBOX_PHASE_READY
		errPhase     = openshellv1.SandboxPhase_SANDBOX_PHASE_ERROR
		deleting     = openshellv1.SandboxPhase_SANDBOX_PHASE_DELETING
		stopping     = openshellv1.SandboxPhase_SANDBOX_PHASE_STOPPING
		stopped      = openshellv1.SandboxPhase_SANDBOX_PHASE_STOPPED
		starting     = openshellv1.SandboxPhase_SANDBOX_PHASE_STARTING
	)
	switch {
	case in.intent == intentDeleting:
		return deleting, nil
	case in.failureReason != "":
		return errPhase, readyCond(false, in.failureReason, in.failureMessage)
	case in.intent == intentStopped:
		return stopped, nil
	case in.intent == intentStopping:
		if drivers.StopConfirmed(in.backend) {
			return stopped, nil
		}
		return stopping, nil
	case in.exited:
		msg := in.failureMessage // without a failureReason: why the main process exited
		if msg == "" {
			msg = "the sandbox's main process exited"
		}
		return errPhase, readyCond(false, drivers.ReasonMainProcessExited, msg)
	}
	bp := drivers.BackendPhase(in.backend)
	switch bp {
	case errPhase, deleting:
		return bp, nil
	case stopped:
		if in.intent == intentStarting {
			return starting, nil
		}
		return stopped, nil
	}
	backendReady := bp == ready
	switch {
	case backendReady && in.connected:
		return ready, readyCond(true, drivers.ReasonDependenciesReady, "backend ready and supervisor connected")
	case in.intent == intentStarting:
		return starting, nil
	case backendReady:
		return provisioning, readyCond(false, drivers.ReasonSupervisorNotConnected, "waiting for the sandbox supervisor to connect to the gateway")
	default:
		return provisioning, nil
	}
}

func readyCond(ok bool, reason, msg string) *openshellv1.SandboxCondition {
	st := drivers.StatusFalse
	if ok {
		st = drivers.StatusTrue
	}
	return &openshellv1.SandboxCondition{Type: drivers.ConditionReady, Status: st, Reason: reason, Message: msg,
		LastTransitionTime: time.Now().UTC().Format(time.RFC3339)}
}

// publicConditions copies the driver's conditions 1:1, replacing its Ready condition
// with the gateway's when there is one.
func publicConditions(backend *computev1.DriverSandboxStatus, gw *openshellv1.SandboxCondition) []*openshellv1.SandboxCondition {
	var out []*openshellv1.SandboxCondition
	for _, c := range backend.GetConditions() {
		if gw != nil && c.GetType() == drivers.ConditionReady {
			continue
		}
		out = append(out, &openshellv1.SandboxCondition{Type: c.GetType(), Status: c.GetStatus(), Reason: c.GetReason(),
			Message: c.GetMessage(), LastTransitionTime: c.GetLastTransitionTime()})
	}
	if gw != nil {
		out = append(out, gw)
	}
	return out
}

// keepTransitionTime gives the gateway's Ready condition the stored transition time
// when its status and reason did not change, so the time means "since when".
func keepTransitionTime(stored []*openshellv1.SandboxCondition, c *openshellv1.SandboxCondition) {
	if c == nil {
		return
	}
	for _, old := range stored {
		if old.GetType() == c.GetType() && old.GetStatus() == c.GetStatus() && old.GetReason() == c.GetReason() && old.GetLastTransitionTime() != "" {
			c.LastTransitionTime = old.GetLastTransitionTime()
			return
		}
	}
}
