package kubernetes

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/internal/kubetest"
)

// TestMissingCRD removes the Sandbox CRD from the real apiserver (holding the CRD
// lock, so no other package writes Sandboxes meanwhile), checks that the driver refuses
// to start with an error naming the CRD and how to install it, and puts the CRD back.
func TestMissingCRD(t *testing.T) {
	c := kubetest.Require(t)
	c.LockSandboxCRD(t, true)
	ns := c.Namespace(t)
	crds := c.Dynamic.Resource(apiextv1.SchemeGroupVersion.WithResource("customresourcedefinitions"))
	orig, err := crds.Get(t.Context(), crdName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the Sandbox CRD: %v", err)
	}
	saved := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": orig.GetAPIVersion(), "kind": orig.GetKind(),
		"metadata": map[string]any{"name": orig.GetName(), "labels": orig.GetLabels(), "annotations": orig.GetAnnotations()},
		"spec":     orig.Object["spec"],
	}}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		for {
			_, err := crds.Create(ctx, saved, metav1.CreateOptions{})
			if err == nil {
				break
			}
			if !apierrors.IsAlreadyExists(err) || ctx.Err() != nil {
				t.Errorf("put the Sandbox CRD back: %v", err)
				return
			}
			time.Sleep(200 * time.Millisecond) // the old object is still being finalized
		}
		waitFor(t, 60*time.Second, "the Sandbox CRD to be served again", func() bool {
			d, err := New(ctx, clusterConfig(ns), Options{Rest: c.Config})
			if err != nil {
				return false
			}
			d.Close()
			return true
		})
	})
	if err := crds.Delete(t.Context(), crdName, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete the Sandbox CRD: %v", err)
	}
	var last error
	waitFor(t, 60*time.Second, "the driver to see no Sandbox CRD", func() bool {
		_, last = New(t.Context(), clusterConfig(ns), Options{Rest: c.Config})
		return errors.Is(last, drivers.ErrFailedPrecondition) && strings.Contains(last.Error(), "is not installed")
	})
	for _, want := range []string{crdName, "agent-sandbox"} {
		if !strings.Contains(last.Error(), want) {
			t.Errorf("missing-CRD error %q does not name %s", last, want)
		}
	}
}
