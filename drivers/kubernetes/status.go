package kubernetes

import (
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sandboxv1beta1 "sigs.k8s.io/agent-sandbox/api/v1beta1"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/containers"
)

// Reasons this driver adds to the shared vocabulary. The waiting reasons of a
// container (ErrImagePull, ImagePullBackOff, CreateContainerConfigError, ...)
// are passed through as they are: the user looks them up as Kubernetes names them.
const (
	ReasonPodPending  = drivers.ReasonDependenciesNotReady
	ReasonPodDeleting = "PodTerminating"
)

// Waiting reasons that will not fix themselves: the sandbox is in error until
// the cause is fixed (the pod keeps retrying, and becomes Ready if it is).
var failedWaiting = map[string]string{
	"ErrImagePull":               "the image cannot be pulled: check its name and that the node can reach its registry (or import it into the node's container runtime)",
	"ImagePullBackOff":           "the image cannot be pulled: check its name and that the node can reach its registry (or import it into the node's container runtime)",
	"InvalidImageName":           "the image name is not valid: fix the sandbox's image",
	"ErrImageNeverPull":          "the image is not on the node and image_pull_policy is Never: import it into the node's container runtime or change image_pull_policy",
	"CreateContainerConfigError": "the pod's container configuration is wrong (a missing Secret or ConfigMap?)",
	"CreateContainerError":       "the container runtime could not create the container",
	"RunContainerError":          "the container runtime could not start the container",
	"CrashLoopBackOff":           "the container keeps exiting",
}

// observe turns a Sandbox and its pod (nil when none) into an observation.
func observe(sb *sandboxObj, pod *corev1.Pod) *computev1.DriverSandbox {
	labels := sb.GetLabels()
	out := &computev1.DriverSandbox{
		Id:        labels[drivers.LabelSandboxID],
		Name:      labels[drivers.LabelSandboxName],
		Namespace: sb.GetNamespace(),
		Workspace: labels[drivers.LabelWorkspace],
		Status:    &computev1.DriverSandboxStatus{SandboxName: sb.GetName()},
	}
	if pod != nil {
		out.Status.InstanceId = string(pod.UID)
	}
	out.Status.Conditions, out.Status.Deleting = conditions(sb, pod)
	return out
}

// conditions maps a Sandbox and its pod onto the conditions the gateway derives
// the phase from (see drivers.BackendPhase).
func conditions(sb *sandboxObj, pod *corev1.Pod) ([]*computev1.DriverCondition, bool) {
	ready := func(status, reason, msg string, at time.Time) []*computev1.DriverCondition {
		return []*computev1.DriverCondition{containers.Condition(drivers.ConditionReady, status, reason, msg, at)}
	}
	created := sb.CreationTimestamp.Time
	if sb.DeletionTimestamp != nil {
		return ready(drivers.StatusFalse, ReasonPodDeleting, "sandbox is being deleted", sb.DeletionTimestamp.Time), true
	}
	if sb.suspended {
		if pod == nil {
			return containers.StoppedOnRequest(suspendTime(sb)), false
		}
		return ready(drivers.StatusFalse, drivers.ReasonDependenciesNotReady, "stopping: waiting for pod "+pod.Name+" to terminate", suspendTime(sb)), false
	}
	if pod == nil {
		msg := "waiting for the agent-sandbox controller to create the pod"
		if c := sandboxCondition(sb, sandboxv1beta1.SandboxConditionReady); c != nil && c.Status == metav1.ConditionFalse && c.Message != "" {
			msg += " (controller: " + c.Reason + ": " + c.Message + ")"
		}
		return ready(drivers.StatusFalse, ReasonPodPending, msg, created), false
	}
	if pod.DeletionTimestamp != nil {
		return ready(drivers.StatusFalse, drivers.ReasonDependenciesNotReady, "pod "+pod.Name+" is terminating", pod.DeletionTimestamp.Time), false
	}
	switch pod.Status.Phase {
	case corev1.PodSucceeded, corev1.PodFailed:
		return []*computev1.DriverCondition{exited(pod)}, false
	}
	// A container that cannot start says why while it waits.
	for _, cs := range append(append([]corev1.ContainerStatus{}, pod.Status.InitContainerStatuses...), pod.Status.ContainerStatuses...) {
		w := cs.State.Waiting
		if w == nil {
			continue
		}
		if fix, ok := failedWaiting[w.Reason]; ok {
			msg := fmt.Sprintf("container %s of pod %s: %s: %s", cs.Name, pod.Name, w.Reason, fix)
			if w.Message != "" {
				msg += " (" + oneLine(w.Message) + ")"
			}
			return ready(drivers.StatusFalse, w.Reason, msg, podTime(pod)), false
		}
	}
	if c := podCondition(pod, corev1.PodReady); c != nil && c.Status == corev1.ConditionTrue {
		return ready(drivers.StatusTrue, drivers.ReasonRunning, "pod "+pod.Name+" is ready", c.LastTransitionTime.Time), false
	}
	if c := podCondition(pod, corev1.PodScheduled); c != nil && c.Status == corev1.ConditionFalse {
		// Unschedulable can pass (a claim being bound, a node being added): transient.
		return ready(drivers.StatusFalse, drivers.ReasonDependenciesNotReady,
			fmt.Sprintf("pod %s is not scheduled: %s: %s", pod.Name, c.Reason, oneLine(c.Message)), c.LastTransitionTime.Time), false
	}
	if pod.Status.Phase == corev1.PodRunning {
		return ready(drivers.StatusFalse, drivers.ReasonContainerStarting, "pod "+pod.Name+" is running, not ready yet", podTime(pod)), false
	}
	return ready(drivers.StatusFalse, drivers.ReasonContainerCreated, fmt.Sprintf("pod %s is %s", pod.Name, strings.ToLower(string(pod.Status.Phase))), podTime(pod)), false
}

// exited describes a pod whose supervisor ended.
func exited(pod *corev1.Pod) *computev1.DriverCondition {
	code, oom, reason, msg, at := 0, false, "", "", podTime(pod)
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.Name != containerName || cs.State.Terminated == nil {
			continue
		}
		t := cs.State.Terminated
		code, reason, msg = int(t.ExitCode), t.Reason, t.Message
		oom = t.Reason == "OOMKilled"
		if !t.FinishedAt.IsZero() {
			at = t.FinishedAt.Time
		}
	}
	errText := reason
	if pod.Status.Reason != "" {
		errText = strings.TrimSpace(pod.Status.Reason + " " + oneLine(pod.Status.Message))
	}
	return containers.Exited(code, oom, errText, containers.LastLines(msg, 20), at)
}

func podCondition(pod *corev1.Pod, t corev1.PodConditionType) *corev1.PodCondition {
	for i := range pod.Status.Conditions {
		if pod.Status.Conditions[i].Type == t {
			return &pod.Status.Conditions[i]
		}
	}
	return nil
}

func sandboxCondition(sb *sandboxObj, t sandboxv1beta1.ConditionType) *metav1.Condition {
	for i := range sb.Status.Conditions {
		if sb.Status.Conditions[i].Type == string(t) {
			return &sb.Status.Conditions[i]
		}
	}
	return nil
}

// podTime is the latest transition the pod reports (stable across re-reads, so an
// unchanged pod gives an unchanged observation).
func podTime(pod *corev1.Pod) time.Time {
	t := pod.CreationTimestamp.Time
	for _, c := range pod.Status.Conditions {
		if c.LastTransitionTime.After(t) {
			t = c.LastTransitionTime.Time
		}
	}
	return t
}

func suspendTime(sb *sandboxObj) time.Time {
	if c := sandboxCondition(sb, sandboxv1beta1.SandboxConditionSuspended); c != nil {
		return c.LastTransitionTime.Time
	}
	return sb.CreationTimestamp.Time
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 512 {
		s = s[:512] + "…"
	}
	return s
}
