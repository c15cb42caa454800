package helm

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	openshellv1 "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/gateway/pki"
	"github.com/openshell/openshell/internal/grpcopts"
	"github.com/openshell/openshell/internal/kubetest"
)

const fieldManager = "openshell-chart-test"

// applier applies rendered objects with server-side apply and deletes them again.
type applier struct {
	dyn    dynamic.Interface
	mapper meta.RESTMapper
}

func newApplier(c *kubetest.Cluster) *applier {
	return &applier{
		dyn:    c.Dynamic,
		mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(c.Client.Discovery())),
	}
}

func (a *applier) resource(o *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := o.GroupVersionKind()
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", gvk, o.GetName(), err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return a.dyn.Resource(m.Resource).Namespace(o.GetNamespace()), nil
	}
	return a.dyn.Resource(m.Resource), nil
}

func (a *applier) apply(ctx context.Context, o *unstructured.Unstructured) error {
	r, err := a.resource(o)
	if err != nil {
		return err
	}
	_, err = r.Apply(ctx, o.GetName(), o, metav1.ApplyOptions{FieldManager: fieldManager, Force: true})
	if err != nil {
		return fmt.Errorf("apply %s %s/%s: %w", o.GetKind(), o.GetNamespace(), o.GetName(), err)
	}
	return nil
}

// deleteAll deletes the objects (foreground, so a Deployment's pods go with it) and
// waits until the apiserver has none of them.
func (a *applier) deleteAll(ctx context.Context, objs []*unstructured.Unstructured) error {
	fg := metav1.DeletePropagationForeground
	for _, o := range objs {
		r, err := a.resource(o)
		if err != nil {
			return err
		}
		if err := r.Delete(ctx, o.GetName(), metav1.DeleteOptions{PropagationPolicy: &fg}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete %s %s: %w", o.GetKind(), o.GetName(), err)
		}
	}
	return wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		for _, o := range objs {
			r, err := a.resource(o)
			if err != nil {
				return false, err
			}
			if _, err := r.Get(ctx, o.GetName(), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return false, nil
			}
		}
		return true, nil
	})
}

// TestApplyToAPIServer: every rendered object, default and replicas=3+postgres, is
// accepted by the real apiserver with server-side apply (really stored, not a dry run),
// read back with the chart's content, then deleted with nothing left.
func TestApplyToAPIServer(t *testing.T) {
	c := kubetest.Require(t)
	a := newApplier(c)
	for name, vals := range map[string]map[string]any{
		"default":           nil,
		"replicas+postgres": {"replicas": 3, "database": map[string]any{"existingSecret": "pg"}},
	} {
		t.Run(name, func(t *testing.T) {
			ctx := t.Context()
			ns := c.Namespace(t)
			objs, _, err := render(t, ns, vals)
			if err != nil {
				t.Fatal(err)
			}
			// Stored but never scheduled: this test is about the objects, not pods.
			for _, o := range objs {
				if o.GetKind() == "Deployment" {
					_ = unstructured.SetNestedField(o.Object, int64(0), "spec", "replicas")
				}
			}
			for _, o := range objs {
				if err := a.apply(ctx, o); err != nil {
					t.Fatal(err)
				}
			}
			for _, o := range objs {
				r, _ := a.resource(o)
				got, err := r.Get(ctx, o.GetName(), metav1.GetOptions{})
				if err != nil {
					t.Fatalf("%s %s not stored: %v", o.GetKind(), o.GetName(), err)
				}
				if o.GetKind() == "Role" {
					rules, _, _ := unstructured.NestedSlice(got.Object, "rules")
					if len(rules) != len(driverRules) {
						t.Errorf("stored Role has %d rules, want %d", len(rules), len(driverRules))
					}
				}
			}
			checkAccess(t, c, ns)
			if err := a.deleteAll(ctx, objs); err != nil {
				t.Fatal(err)
			}
			assertEmpty(t, c, ns)
		})
	}
}

// checkAccess asks the real apiserver's authorizer (SubjectAccessReview) what the
// gateway's ServiceAccount may do: every call the driver makes, and nothing next to it.
func checkAccess(t *testing.T, c *kubetest.Cluster, ns string) {
	t.Helper()
	user := "system:serviceaccount:" + ns + ":gw-openshell"
	for _, tc := range []struct {
		group, resource, verb, ns, name string
		allowed                         bool
	}{
		{"agents.x-k8s.io", "sandboxes", "create", ns, "", true},
		{"agents.x-k8s.io", "sandboxes", "watch", ns, "", true},
		{"agents.x-k8s.io", "sandboxes", "patch", ns, "s1", true},
		{"agents.x-k8s.io", "sandboxes", "delete", ns, "s1", true},
		{"", "secrets", "create", ns, "", true},
		{"", "secrets", "delete", ns, "t1", true},
		{"", "pods", "list", ns, "", true},
		{"", "pods", "watch", ns, "", true},
		{"", "persistentvolumeclaims", "get", ns, "p1", true},
		{"", "persistentvolumeclaims", "delete", ns, "p1", true},
		{"", "namespaces", "get", ns, ns, true},
		// Not granted: reading other Secrets, touching pods, other namespaces.
		{"", "secrets", "get", ns, "t1", false},
		{"", "secrets", "list", ns, "", false},
		{"", "pods", "delete", ns, "x", false},
		{"", "pods", "create", ns, "", false},
		{"agents.x-k8s.io", "sandboxes", "create", "default", "", false},
		{"", "namespaces", "get", "default", "default", false},
	} {
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User:               user,
			Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{Group: tc.group, Resource: tc.resource, Verb: tc.verb, Namespace: tc.ns, Name: tc.name},
		}}
		r, err := c.Client.AuthorizationV1().SubjectAccessReviews().Create(t.Context(), sar, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r.Status.Allowed != tc.allowed {
			t.Errorf("%s %s.%s in %q (name %q): allowed %v, want %v (%s)", tc.verb, tc.resource, tc.group, tc.ns, tc.name, r.Status.Allowed, tc.allowed, r.Status.Reason)
		}
	}
}

// assertEmpty fails when the namespace still holds a PVC, a Secret the chart made, or a pod.
func assertEmpty(t *testing.T, c *kubetest.Cluster, ns string) {
	t.Helper()
	ctx := t.Context()
	pvcs, err := c.Client.CoreV1().PersistentVolumeClaims(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	secrets, err := c.Client.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=gw"})
	if err != nil {
		t.Fatal(err)
	}
	pods, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=gw"})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(pvcs.Items) + len(secrets.Items) + len(pods.Items); n != 0 {
		t.Fatalf("left behind in %s: %d PVCs, %d Secrets, %d pods", ns, len(pvcs.Items), len(secrets.Items), len(pods.Items))
	}
}

// TestInstallAnswersHealth: the chart installed on the real node (gateway image imported
// into the node's containerd by scripts/build-gateway-image.sh import): the gateway pod
// becomes Ready and answers Health over mTLS through its Service's ClusterIP (kube-proxy
// on this host), then everything, PVC and Secrets included, is deleted.
func TestInstallAnswersHealth(t *testing.T) {
	c := kubetest.RequireNode(t)
	a := newApplier(c)
	ctx := t.Context()
	ns := c.Namespace(t)

	// The cluster has no volume provisioner: a hostPath PersistentVolume of a class
	// only this test uses stands for one, owned by the image's non-root user.
	class := "openshell-chart-" + ns
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(state, 65532, 65532); err != nil {
		t.Fatal(err)
	}
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: class},
		Spec: corev1.PersistentVolumeSpec{
			StorageClassName:              class,
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			PersistentVolumeSource:        corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: state}},
		},
	}
	if _, err := c.Client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Client.CoreV1().PersistentVolumes().Delete(context.Background(), class, metav1.DeleteOptions{})
	})

	objs, _, err := render(t, ns, map[string]any{
		"image":       map[string]any{"pullPolicy": "Never"},
		"persistence": map[string]any{"storageClassName": class},
		"gateway":     map[string]any{"logFormat": "text"},
	})
	if err != nil {
		t.Fatal(err)
	}
	deleted := false
	t.Cleanup(func() {
		if !deleted {
			_ = a.deleteAll(context.Background(), objs)
		}
	})
	for _, o := range objs {
		if err := a.apply(ctx, o); err != nil {
			t.Fatal(err)
		}
	}

	var pod *corev1.Pod
	err = wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=gw,app.kubernetes.io/component=gateway"})
		if err != nil || len(pods.Items) == 0 {
			return false, err
		}
		pod = &pods.Items[0]
		for _, cs := range append(pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses...) {
			if w := cs.State.Waiting; w != nil && (w.Reason == "ErrImageNeverPull" || w.Reason == "ImagePullBackOff") {
				return false, fmt.Errorf("container %s: %s: %s; import the image with scripts/build-gateway-image.sh import", cs.Name, w.Reason, w.Message)
			}
		}
		for _, cond := range pod.Status.Conditions {
			if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		logs := ""
		if pod != nil {
			if b, lerr := c.Client.CoreV1().Pods(ns).GetLogs(pod.Name, &corev1.PodLogOptions{Container: "gateway"}).DoRaw(context.Background()); lerr == nil {
				logs = string(b)
			}
			t.Logf("pod status: %+v", pod.Status)
		}
		t.Fatalf("gateway pod not Ready: %v\ngateway log:\n%s", err, logs)
	}

	svc, err := c.Client.CoreV1().Services(ns).Get(ctx, "gw-openshell", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sec, err := c.Client.CoreV1().Secrets(ns).Get(ctx, "gw-openshell-pki", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(sec.Data["ca.crt"]) {
		t.Fatal("the PKI Secret's ca.crt holds no certificate")
	}
	// The Service has a ClusterIP but no DNS name here (no cluster DNS); the server
	// certificate always names pki.SandboxHostName, which the client asks for.
	addr := net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(svc.Spec.Ports[0].Port)))
	creds := grpcopts.TLS(&tls.Config{RootCAs: roots, ServerName: pki.SandboxHostName, MinVersion: tls.VersionTLS12})
	conn, err := grpc.NewClient(addr, grpcopts.Dial(creds)...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var resp *openshellv1.HealthResponse
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		r, herr := openshellv1.NewOpenShellClient(conn).Health(cctx, &openshellv1.HealthRequest{})
		if herr != nil {
			t.Logf("Health through %s: %v", addr, herr)
			return false, nil
		}
		resp = r
		return true, nil
	})
	if err != nil {
		t.Fatalf("no Health answer through the Service %s: %v", addr, err)
	}
	if resp.GetStatus() != openshellv1.ServiceStatus_SERVICE_STATUS_HEALTHY {
		t.Fatalf("Health through the Service = %v, want healthy", resp.GetStatus())
	}
	t.Logf("Health through Service %s (pod %s): %v, version %s", addr, pod.Name, resp.GetStatus(), resp.GetVersion())

	if err := a.deleteAll(ctx, objs); err != nil {
		t.Fatal(err)
	}
	deleted = true
	assertEmpty(t, c, ns)
}
