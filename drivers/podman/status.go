package podman

import (
	"context"
	"time"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/containers"
)

// exitLogLines is how many of a dead container's last log lines go into its condition.
const exitLogLines = 20

// Reasons this driver adds to the shared vocabulary.
const (
	ReasonContainerPaused   = "ContainerPaused"
	ReasonContainerRemoving = "ContainerRemoving"
	ReasonContainerStopping = "ContainerStopping"
)

// observe turns an inspected container into a sandbox observation.
func (d *Driver) observe(ctx context.Context, c containerInspect) *computev1.DriverSandbox {
	var labels map[string]string
	if c.Config != nil {
		labels = c.Config.Labels
	}
	id := labels[drivers.LabelSandboxID]
	sb := &computev1.DriverSandbox{
		Id:        id,
		Name:      labels[drivers.LabelSandboxName],
		Workspace: labels[drivers.LabelWorkspace],
		Status: &computev1.DriverSandboxStatus{
			SandboxName: labels[drivers.LabelSandboxName],
			InstanceId:  containers.ShortID(c.ID),
		},
	}
	st := c.State
	if st == nil {
		sb.Status.Conditions = []*computev1.DriverCondition{
			cond(drivers.ConditionReady, drivers.StatusUnknown, drivers.ReasonInspectFailed, "the service reported no container state", time.Time{}),
		}
		return sb
	}
	stopped := containers.IsStopped(d.stateDir(id))
	var logs string
	if exited(st) && !stopped {
		logs = d.lastLogs(ctx, c.ID)
	}
	sb.Status.Conditions, sb.Status.Deleting = conditions(st, c.Created, stopped, logs)
	return sb
}

func exited(st *containerState) bool {
	switch st.Status {
	case "exited", "stopped", "dead":
		return !st.Running
	}
	return false
}

// conditions maps a libpod container state onto the conditions the gateway derives
// the sandbox phase from (see drivers.BackendPhase).
func conditions(st *containerState, created time.Time, stopRequested bool, logs string) ([]*computev1.DriverCondition, bool) {
	ready := func(status, reason, msg string, at time.Time) []*computev1.DriverCondition {
		return []*computev1.DriverCondition{cond(drivers.ConditionReady, status, reason, msg, at)}
	}
	switch {
	case st.Status == "removing":
		return ready(drivers.StatusFalse, ReasonContainerRemoving, "container is being removed", st.FinishedAt), true
	case st.Status == "created" || st.Status == "configured" || st.Status == "initialized":
		return ready(drivers.StatusFalse, drivers.ReasonContainerCreated, "container created, not started yet", created), false
	case st.Restarting:
		return ready(drivers.StatusFalse, drivers.ReasonContainerStarting, "container is restarting", st.StartedAt), false
	case st.Paused || st.Status == "paused":
		return ready(drivers.StatusUnknown, ReasonContainerPaused, "container is paused (podman unpause to resume)", st.StartedAt), false
	case st.Running || st.Status == "running":
		return ready(drivers.StatusTrue, drivers.ReasonRunning, "container running", st.StartedAt), false
	case st.Status == "stopping":
		return ready(drivers.StatusUnknown, ReasonContainerStopping, "container is stopping", st.StartedAt), false
	case stopRequested:
		return containers.StoppedOnRequest(st.FinishedAt), false
	default: // exited without a stop request: the supervisor died.
		return []*computev1.DriverCondition{containers.Exited(st.ExitCode, st.OOMKilled, st.Error, logs, st.FinishedAt)}, false
	}
}

// lastLogs returns the container's last log lines, or "" when they cannot be read.
func (d *Driver) lastLogs(ctx context.Context, containerID string) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := d.cli.containerLogs(ctx, containerID, exitLogLines)
	if err != nil && out == "" {
		return ""
	}
	return containers.LastLines(out, exitLogLines)
}

var cond = containers.Condition
