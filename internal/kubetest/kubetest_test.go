package kubetest

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
)

var sandboxes = schema.GroupVersionResource{Group: "agents.x-k8s.io", Version: "v1alpha1", Resource: "sandboxes"}

// TestSandboxBecomesPod creates a Sandbox in a fresh namespace and checks that the real
// agent-sandbox controller makes its Pod (owned by the Sandbox, with the template's
// image), that the object reads back through v1beta1 too, and, when the node runs, that
// the Pod really runs on it and the Sandbox turns Ready. Deleting the namespace at the
// end must remove everything (Namespace's cleanup waits for it).
func TestSandboxBecomesPod(t *testing.T) {
	c := Require(t)
	c.LockSandboxCRD(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ns := c.Namespace(t)

	sb := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "agents.x-k8s.io/v1alpha1",
		"kind":       "Sandbox",
		"metadata":   map[string]any{"name": "probe"},
		"spec": map[string]any{
			"podTemplate": map[string]any{
				"spec": map[string]any{
					"containers": []any{map[string]any{
						"name":            "main",
						"image":           PauseImage,
						"imagePullPolicy": "Never",
					}},
				},
			},
		},
	}}
	if _, err := c.Dynamic.Resource(sandboxes).Namespace(ns).Create(ctx, sb, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create Sandbox: %v", err)
	}

	// The controller makes the Pod: find it by its owner, not by a naming convention.
	var pod *corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for i := range pods.Items {
			for _, o := range pods.Items[i].OwnerReferences {
				if o.Kind == "Sandbox" && o.Name == "probe" {
					pod = &pods.Items[i]
					return true, nil
				}
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("the agent-sandbox controller made no Pod for Sandbox %s/probe: %v", ns, err)
	}
	if got := pod.Spec.Containers[0].Image; got != PauseImage {
		t.Errorf("pod image = %q, want %q", got, PauseImage)
	}

	// The CRD serves both versions over one stored form.
	beta := sandboxes
	beta.Version = "v1beta1"
	got, err := c.Dynamic.Resource(beta).Namespace(ns).Get(ctx, "probe", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("read the Sandbox as v1beta1: %v", err)
	}
	img, _, _ := unstructured.NestedSlice(got.Object, "spec", "podTemplate", "spec", "containers")
	if len(img) != 1 || img[0].(map[string]any)["image"] != PauseImage {
		t.Errorf("v1beta1 view of the Sandbox lost its container: %v", img)
	}

	ready, err := c.NodeReady(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !ready {
		t.Logf("no Ready node: the Pod stays Pending (checked the controller only)")
		return
	}
	start := time.Now()
	p, err := c.WaitPod(ctx, ns, pod.Name, 2*time.Minute, PodReady)
	if err != nil {
		t.Fatalf("pod on the real node: %v", err)
	}
	t.Logf("pod %s Ready on %s in %s (IP %s)", p.Name, p.Spec.NodeName, time.Since(start).Round(time.Millisecond), p.Status.PodIP)
	if p.Spec.NodeName != NodeName || p.Status.PodIP == "" {
		t.Errorf("pod ran on %q with IP %q, want node %s and a pod IP", p.Spec.NodeName, p.Status.PodIP, NodeName)
	}
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		s, err := c.Dynamic.Resource(sandboxes).Namespace(ns).Get(ctx, "probe", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		conds, _, _ := unstructured.NestedSlice(s.Object, "status", "conditions")
		for _, cnd := range conds {
			m, _ := cnd.(map[string]any)
			if m["type"] == "Ready" && m["status"] == "True" {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Errorf("Sandbox never turned Ready while its pod ran: %v", err)
	}
}
