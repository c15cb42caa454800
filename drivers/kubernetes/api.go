package kubernetes

import (
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	sandboxv1beta1 "sigs.k8s.io/agent-sandbox/api/v1beta1"

	"github.com/openshell/openshell/drivers"
)

// The agent-sandbox API. v1beta1 says "suspended" with spec.operatingMode;
// v1alpha1 said it with spec.replicas 0. Everything else the driver writes
// (podTemplate, volumeClaimTemplates, labels) has the same shape in both, so the
// driver builds the v1beta1 object and, for a v1alpha1-only cluster, swaps the
// operating mode for replicas. It reads both fields whatever version serves the
// object, so Sandboxes stored as v1alpha1 are still managed after an upgrade.
const (
	group        = "agents.x-k8s.io"
	versionBeta  = "v1beta1"
	versionAlpha = "v1alpha1"
	resourceName = "sandboxes"
	crdName      = resourceName + "." + group
	// crdFix is how to install what is missing.
	crdFix = "install agent-sandbox v0.5.6: its CRDs (k8s/crds/agents.x-k8s.io_sandboxes.yaml in the sigs.k8s.io/agent-sandbox module) and its controller, or the openshell Helm chart with agentSandbox.enabled=true"
)

func gvr(version string) schema.GroupVersionResource {
	return schema.GroupVersionResource{Group: group, Version: version, Resource: resourceName}
}

// discoverVersion picks the Sandbox API version the cluster serves: forced when
// asked (and then checked), else v1beta1, else v1alpha1.
func discoverVersion(dc discovery.DiscoveryInterface, forced string) (string, error) {
	served := func(v string) (bool, error) {
		list, err := dc.ServerResourcesForGroupVersion(group + "/" + v)
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		for _, r := range list.APIResources {
			if r.Name == resourceName {
				return true, nil
			}
		}
		return false, nil
	}
	candidates := []string{versionBeta, versionAlpha}
	if forced != "" {
		candidates = []string{forced}
	}
	for _, v := range candidates {
		ok, err := served(v)
		if err != nil {
			return "", fmt.Errorf("kubernetes driver: discover %s/%s: %w", group, v, err)
		}
		if ok {
			return v, nil
		}
	}
	if forced != "" {
		return "", fmt.Errorf("kubernetes driver: the cluster does not serve %s/%s (api_version %s in [drivers.kubernetes]): %w; leave api_version empty to use what it serves, or %s",
			group, forced, forced, drivers.ErrFailedPrecondition, crdFix)
	}
	return "", fmt.Errorf("kubernetes driver: the Sandbox CRD %s is not installed (the cluster serves neither %s/%s nor %s/%s): %w; %s",
		crdName, group, versionBeta, group, versionAlpha, drivers.ErrFailedPrecondition, crdFix)
}

// toUnstructured renders sb as the object to send for version.
func toUnstructured(sb *sandboxv1beta1.Sandbox, version string) (*unstructured.Unstructured, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(sb)
	if err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{Object: m}
	u.SetAPIVersion(group + "/" + version)
	u.SetKind(sandboxv1beta1.SandboxKind)
	if version == versionAlpha {
		suspended := sb.Spec.OperatingMode == sandboxv1beta1.SandboxOperatingModeSuspended
		unstructured.RemoveNestedField(u.Object, "spec", "operatingMode")
		replicas := int64(1)
		if suspended {
			replicas = 0
		}
		if err := unstructured.SetNestedField(u.Object, replicas, "spec", "replicas"); err != nil {
			return nil, err
		}
	}
	// The converter writes an empty status and a null creationTimestamp; the
	// apiserver owns both.
	delete(u.Object, "status")
	unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
	return u, nil
}

// sandboxObj is a Sandbox as read, whatever its version.
type sandboxObj struct {
	sandboxv1beta1.Sandbox
	// Suspended: spec.operatingMode Suspended (v1beta1) or spec.replicas 0 (v1alpha1).
	suspended bool
}

// fromUnstructured reads a Sandbox of either version.
func fromUnstructured(u *unstructured.Unstructured) (*sandboxObj, error) {
	var sb sandboxv1beta1.Sandbox
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &sb); err != nil {
		return nil, fmt.Errorf("read Sandbox %s/%s: %w", u.GetNamespace(), u.GetName(), err)
	}
	o := &sandboxObj{Sandbox: sb}
	o.suspended = sb.Spec.OperatingMode == sandboxv1beta1.SandboxOperatingModeSuspended
	if r, found, err := unstructured.NestedFieldNoCopy(u.Object, "spec", "replicas"); err == nil && found {
		switch n := r.(type) {
		case int64:
			o.suspended = o.suspended || n == 0
		case float64:
			o.suspended = o.suspended || n == 0
		}
	}
	return o, nil
}

// suspendPatch is the merge patch that stops (suspend) or starts a Sandbox
// served at version.
func suspendPatch(version string, suspend bool) []byte {
	if version == versionAlpha {
		if suspend {
			return []byte(`{"spec":{"replicas":0}}`)
		}
		return []byte(`{"spec":{"replicas":1}}`)
	}
	if suspend {
		return []byte(`{"spec":{"operatingMode":"Suspended"}}`)
	}
	// Objects first written as v1alpha1 may still carry replicas 0 in storage
	// only when served as v1alpha1; through v1beta1 the mode is all there is.
	return []byte(`{"spec":{"operatingMode":"Running"}}`)
}

// ownerRef makes the Sandbox the owner of a Secret the driver creates, so the
// garbage collector deletes it with the Sandbox.
func ownerRef(u *unstructured.Unstructured) metav1.OwnerReference {
	return metav1.OwnerReference{
		APIVersion: u.GetAPIVersion(),
		Kind:       sandboxv1beta1.SandboxKind,
		Name:       u.GetName(),
		UID:        u.GetUID(),
	}
}
