package docker

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

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
)

// observe turns an inspected container into a sandbox observation.
func (d *Driver) observe(ctx context.Context, c container.InspectResponse) *computev1.DriverSandbox {
	var labels map[string]string
	if c.Config != nil {
		labels = c.Config.Labels
	}
	id := labels[LabelSandboxID]
	sb := &computev1.DriverSandbox{
		Id:        id,
		Name:      labels[LabelSandboxName],
		Workspace: labels[LabelWorkspace],
		Status: &computev1.DriverSandboxStatus{
			SandboxName: labels[LabelSandboxName],
			InstanceId:  containers.ShortID(c.ID),
		},
	}
	st := c.State
	if st == nil {
		sb.Status.Conditions = []*computev1.DriverCondition{
			cond(drivers.ConditionReady, drivers.StatusUnknown, drivers.ReasonInspectFailed, "the daemon reported no container state", ""),
		}
		return sb
	}
	var logs string
	if (st.Status == container.StateExited || st.Status == container.StateDead) && !containers.IsStopped(d.stateDir(id)) {
		logs = d.lastLogs(ctx, c.ID)
	}
	sb.Status.Conditions, sb.Status.Deleting = conditions(st, c.Created, containers.IsStopped(d.stateDir(id)), logs)
	return sb
}

// conditions maps a Docker container state onto the conditions the gateway derives
// the sandbox phase from (see drivers.BackendPhase).
func conditions(st *container.State, created string, stopRequested bool, logs string) ([]*computev1.DriverCondition, bool) {
	ready := func(status, reason, msg, at string) []*computev1.DriverCondition {
		return []*computev1.DriverCondition{cond(drivers.ConditionReady, status, reason, msg, at)}
	}
	switch {
	case st.Status == container.StateRemoving:
		return ready(drivers.StatusFalse, ReasonContainerRemoving, "container is being removed", st.FinishedAt), true
	case st.Status == container.StateCreated:
		return ready(drivers.StatusFalse, drivers.ReasonContainerCreated, "container created, not started yet", created), false
	case st.Restarting || st.Status == container.StateRestarting:
		return ready(drivers.StatusFalse, drivers.ReasonContainerStarting, "container is restarting", st.StartedAt), false
	case st.Paused || st.Status == container.StatePaused:
		return ready(drivers.StatusUnknown, ReasonContainerPaused, "container is paused (docker unpause to resume)", st.StartedAt), false
	case st.Running || st.Status == container.StateRunning:
		return ready(drivers.StatusTrue, drivers.ReasonRunning, "container running", st.StartedAt), false
	case stopRequested:
		return containers.StoppedOnRequest(engineTime(st.FinishedAt)), false
	default: // exited or dead without a stop request: the supervisor died.
		return []*computev1.DriverCondition{containers.Exited(st.ExitCode, st.OOMKilled, st.Error, logs, engineTime(st.FinishedAt))}, false
	}
}

// lastLogs returns the container's last log lines (stdout and stderr interleaved
// by stream), or "" when they cannot be read.
func (d *Driver) lastLogs(ctx context.Context, containerID string) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rc, err := d.cli.ContainerLogs(ctx, containerID, client.ContainerLogsOptions{
		ShowStdout: true, ShowStderr: true, Tail: fmt.Sprint(exitLogLines),
	})
	if err != nil {
		return ""
	}
	defer rc.Close()
	var buf bytes.Buffer
	if _, err := stdcopy.StdCopy(&buf, &buf, rc); err != nil && buf.Len() == 0 {
		return ""
	}
	return containers.LastLines(buf.String(), exitLogLines)
}

// cond builds a condition; at is a Docker RFC 3339 timestamp ("" or zero = now).
func cond(typ, status, reason, msg, at string) *computev1.DriverCondition {
	return containers.Condition(typ, status, reason, msg, engineTime(at))
}

// engineTime parses a Docker timestamp; zero when there is none.
func engineTime(at string) time.Time {
	t, _ := time.Parse(time.RFC3339Nano, at)
	return t
}
