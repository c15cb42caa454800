package containers

import (
	"fmt"
	"strings"
	"time"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
)

// Condition builds a condition; a zero (or pre-2000) time means now.
func Condition(typ, status, reason, msg string, at time.Time) *computev1.DriverCondition {
	if at.IsZero() || at.Year() < 2000 {
		at = time.Now()
	}
	return &computev1.DriverCondition{
		Type:               typ,
		Status:             status,
		Reason:             reason,
		Message:            msg,
		LastTransitionTime: at.UTC().Format(time.RFC3339),
	}
}

// StoppedOnRequest are the conditions of a container that exited because the
// driver stopped it.
func StoppedOnRequest(at time.Time) []*computev1.DriverCondition {
	return []*computev1.DriverCondition{
		Condition(drivers.ConditionReady, drivers.StatusFalse, drivers.ReasonContainerStopped, "sandbox stopped on request", at),
		Condition(drivers.ConditionSuspended, drivers.StatusTrue, drivers.ReasonStopped, "sandbox stopped on request; start it to resume", at),
	}
}

// Exited is the Ready condition of a container that exited without a stop
// request: the supervisor died. errText is the engine's error, logs the
// container's last log lines; both may be "".
func Exited(code int, oomKilled bool, errText, logs string, at time.Time) *computev1.DriverCondition {
	var msg strings.Builder
	fmt.Fprintf(&msg, "container exited with code %d", code)
	if oomKilled {
		msg.WriteString(" (killed: out of memory; raise the sandbox's memory limit)")
	}
	if errText != "" {
		fmt.Fprintf(&msg, ": %s", errText)
	}
	if logs != "" {
		fmt.Fprintf(&msg, "; last log lines:\n%s", logs)
	}
	return Condition(drivers.ConditionReady, drivers.StatusFalse, drivers.ReasonContainerExited, msg.String(), at)
}

// LastLines returns the last n lines of s, without a trailing newline.
func LastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
