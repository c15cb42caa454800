package kubernetes

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	fakediscovery "k8s.io/client-go/discovery/fake"
	clienttesting "k8s.io/client-go/testing"
	sandboxv1beta1 "sigs.k8s.io/agent-sandbox/api/v1beta1"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers"
)

func sbObj(suspended bool) *sandboxObj {
	o := &sandboxObj{suspended: suspended}
	o.Name = "box"
	o.CreationTimestamp = metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	o.Labels = map[string]string{drivers.LabelSandboxID: "id-1", drivers.LabelSandboxName: "box"}
	return o
}

func podWith(phase corev1.PodPhase, mut func(p *corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "box", UID: "u1"}, Status: corev1.PodStatus{Phase: phase}}
	if mut != nil {
		mut(p)
	}
	return p
}

func TestConditions(t *testing.T) {
	now := metav1.Now()
	P := openshellv1.SandboxPhase_SANDBOX_PHASE_PROVISIONING
	for _, tc := range []struct {
		what   string
		sb     *sandboxObj
		pod    *corev1.Pod
		phase  openshellv1.SandboxPhase
		reason string
		msg    string
	}{
		{"no pod yet", sbObj(false), nil, P, drivers.ReasonDependenciesNotReady, "agent-sandbox controller"},
		{"pending", sbObj(false), podWith(corev1.PodPending, nil), P, drivers.ReasonContainerCreated, "pending"},
		{"unschedulable", sbObj(false), podWith(corev1.PodPending, func(p *corev1.Pod) {
			p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: "Unschedulable", Message: "0/1 nodes are available: insufficient nvidia.com/gpu"}}
		}), P, drivers.ReasonDependenciesNotReady, "insufficient nvidia.com/gpu"},
		{"image pull failure", sbObj(false), podWith(corev1.PodPending, func(p *corev1.Pod) {
			p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: containerName, State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ErrImagePull", Message: "pull access denied for nosuch/image"}}}}
		}), openshellv1.SandboxPhase_SANDBOX_PHASE_ERROR, "ErrImagePull", "pull access denied for nosuch/image"},
		{"supervisor image never pulled", sbObj(false), podWith(corev1.PodPending, func(p *corev1.Pod) {
			p.Status.InitContainerStatuses = []corev1.ContainerStatus{{Name: initContainerName, State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ErrImageNeverPull"}}}}
		}), openshellv1.SandboxPhase_SANDBOX_PHASE_ERROR, "ErrImageNeverPull", "import it"},
		{"running not ready", sbObj(false), podWith(corev1.PodRunning, nil), P, drivers.ReasonContainerStarting, "not ready"},
		{"ready", sbObj(false), podWith(corev1.PodRunning, func(p *corev1.Pod) {
			p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}
		}), openshellv1.SandboxPhase_SANDBOX_PHASE_READY, drivers.ReasonRunning, "ready"},
		{"exited", sbObj(false), podWith(corev1.PodFailed, func(p *corev1.Pod) {
			p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: containerName, State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 137, Reason: "OOMKilled"}}}}
		}), openshellv1.SandboxPhase_SANDBOX_PHASE_ERROR, drivers.ReasonContainerExited, "out of memory"},
		{"stopping", sbObj(true), podWith(corev1.PodRunning, nil), P, drivers.ReasonDependenciesNotReady, "stopping"},
		{"stopped", sbObj(true), nil, openshellv1.SandboxPhase_SANDBOX_PHASE_STOPPED, drivers.ReasonContainerStopped, "stopped"},
	} {
		conds, deleting := conditions(tc.sb, tc.pod)
		obs := observe(tc.sb, tc.pod)
		if deleting || obs.GetId() != "id-1" || obs.GetName() != "box" {
			t.Errorf("%s: deleting %v id %q name %q", tc.what, deleting, obs.GetId(), obs.GetName())
		}
		if got := drivers.BackendPhase(obs.GetStatus()); got != tc.phase {
			t.Errorf("%s: phase %v, want %v (%v)", tc.what, got, tc.phase, conds)
		}
		r := drivers.FindCondition(obs.GetStatus(), drivers.ConditionReady)
		if r == nil || r.GetReason() != tc.reason || !strings.Contains(r.GetMessage(), tc.msg) {
			t.Errorf("%s: Ready condition %v, want reason %s and message with %q", tc.what, r, tc.reason, tc.msg)
		}
	}
	del := sbObj(false)
	del.DeletionTimestamp = &now
	if _, deleting := conditions(del, nil); !deleting {
		t.Errorf("a Sandbox being deleted is not reported deleting")
	}
}

// FuzzConditions feeds pod statuses as the API server would send them (JSON from
// a node the gateway does not control): mapping never panics, always yields
// exactly one Ready condition, and its messages stay bounded.
func FuzzConditions(f *testing.F) {
	f.Add([]byte(`{"phase":"Pending","containerStatuses":[{"name":"sandbox","state":{"waiting":{"reason":"ImagePullBackOff","message":"x"}}}]}`), false)
	f.Add([]byte(`{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}`), false)
	f.Add([]byte(`{"phase":"Failed","reason":"Evicted","message":"low memory","containerStatuses":[{"name":"sandbox","state":{"terminated":{"exitCode":1,"message":"boom"}}}]}`), false)
	f.Add([]byte(`{"phase":"Running"}`), true)
	f.Add([]byte(`{}`), false)
	f.Fuzz(func(t *testing.T, status []byte, suspended bool) {
		var st corev1.PodStatus
		if err := json.Unmarshal(status, &st); err != nil {
			return
		}
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "box"}, Status: st}
		conds, _ := conditions(sbObj(suspended), pod)
		n := 0
		for _, c := range conds {
			if c.GetType() == drivers.ConditionReady {
				n++
			}
			if len(c.GetMessage()) > 8192 {
				t.Errorf("condition message of %d bytes", len(c.GetMessage()))
			}
		}
		if n != 1 {
			t.Errorf("%d Ready conditions in %v", n, conds)
		}
	})
}

func TestErrorMapping(t *testing.T) {
	sbGR := schema.GroupResource{Group: group, Resource: resourceName}
	forbidden := apierrors.NewForbidden(sbGR, "", errors.New(`User "system:serviceaccount:x:gw" cannot create resource "sandboxes"`))
	err := mapError(forbidden, "sbx", "https://api", "create", resourceName, "create Sandbox box")
	if !errors.Is(err, drivers.ErrFailedPrecondition) {
		t.Errorf("forbidden: %v is not ErrFailedPrecondition", err)
	}
	for _, want := range []string{`verbs: ["create"]`, `resources: ["sandboxes"]`, `apiGroups: ["agents.x-k8s.io"]`, "namespace sbx", "Role"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("forbidden: %q does not say %s", err, want)
		}
	}
	nsMissing := apierrors.NewNotFound(schema.GroupResource{Resource: "namespaces"}, "sbx")
	if err := mapError(nsMissing, "sbx", "", "create", "secrets", "x"); !errors.Is(err, drivers.ErrFailedPrecondition) || !strings.Contains(err.Error(), "kubectl create namespace sbx") {
		t.Errorf("namespace missing: %v", err)
	}
	noCRD := apierrors.NewNotFound(sbGR, "")
	if err := mapError(noCRD, "sbx", "", "list", resourceName, "x"); !errors.Is(err, drivers.ErrFailedPrecondition) || !strings.Contains(err.Error(), crdName) {
		t.Errorf("CRD missing: %v", err)
	}
	gone := apierrors.NewNotFound(sbGR, "box")
	if err := mapError(gone, "sbx", "", "get", resourceName, "x"); !errors.Is(err, drivers.ErrNotFound) {
		t.Errorf("object missing: %v", err)
	}
	if err := mapError(apierrors.NewServiceUnavailable("later"), "sbx", "https://api", "get", "pods", "x"); !errors.Is(err, drivers.ErrUnavailable) {
		t.Errorf("unavailable: %v", err)
	}
	_ = sandboxv1beta1.SandboxKind
}

// TestDiscoverVersion uses client-go's fake discovery as a STAND-IN for a cluster
// without the CRD (the shared test cluster keeps it installed for other tests);
// the v1alpha1-only and v1beta1 cases also run against the real apiserver in
// TestUpgradeAlphaToBeta.
func TestDiscoverVersion(t *testing.T) {
	list := func(v string) *metav1.APIResourceList {
		return &metav1.APIResourceList{GroupVersion: group + "/" + v, APIResources: []metav1.APIResource{{Name: resourceName, Kind: "Sandbox", Namespaced: true}}}
	}
	for _, tc := range []struct {
		what, forced, want, err string
		served                  []*metav1.APIResourceList
	}{
		{"both served", "", versionBeta, "", []*metav1.APIResourceList{list(versionAlpha), list(versionBeta)}},
		{"only v1alpha1", "", versionAlpha, "", []*metav1.APIResourceList{list(versionAlpha)}},
		{"forced v1alpha1", versionAlpha, versionAlpha, "", []*metav1.APIResourceList{list(versionAlpha), list(versionBeta)}},
		{"forced v1beta1 not served", versionBeta, "", "does not serve agents.x-k8s.io/v1beta1", []*metav1.APIResourceList{list(versionAlpha)}},
		{"no CRD", "", "", "the Sandbox CRD sandboxes.agents.x-k8s.io is not installed", nil},
	} {
		fd := &fakediscovery.FakeDiscovery{Fake: &clienttesting.Fake{Resources: tc.served}}
		got, err := discoverVersion(fd, tc.forced)
		if tc.err == "" && (err != nil || got != tc.want) {
			t.Errorf("%s: %q, %v; want %q", tc.what, got, err, tc.want)
		}
		if tc.err != "" && (!errors.Is(err, drivers.ErrFailedPrecondition) || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "install agent-sandbox")) {
			t.Errorf("%s: err %v, want ErrFailedPrecondition saying %q and how to install", tc.what, err, tc.err)
		}
	}
}
