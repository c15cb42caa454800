package kubernetes

import (
	"cmp"
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/internal/kubetest"
	"github.com/openshell/openshell/internal/testenv"
)

// Images on the test node: ENGINE=containerd scripts/testimage/build.sh and
// scripts/build-gateway-image.sh import imports them into its containerd.
const testImage = "docker.io/openshell-test/busybox:latest"

// supervisorImage is the gateway image (its tag follows the chart's appVersion).
var supervisorImage = cmp.Or(os.Getenv("OPENSHELL_GATEWAY_IMAGE"), "docker.io/openshell/gateway:0.1.0")

// clusterConfig is a driver config for the test cluster in namespace ns.
func clusterConfig(ns string) Config {
	return Config{
		Namespace:       ns,
		SupervisorImage: supervisorImage,
		ImagePullPolicy: string(corev1.PullNever),
		GatewayEndpoint: "https://" + drivers.GatewayHost + ":17670",
		DefaultImage:    testImage,
		ResyncInterval:  5 * time.Second,
	}
}

func newClusterDriver(t *testing.T, c *kubetest.Cluster, cfg Config) *Driver {
	t.Helper()
	d, err := New(t.Context(), cfg, Options{Rest: c.Config})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return d
}

func TestConformance(t *testing.T) {
	c := kubetest.RequireNode(t) // the pods run on the real node
	c.LockSandboxCRD(t, false)
	ns := c.Namespace(t)
	drivertest.Suite(t, func(t *testing.T) drivers.Driver {
		return newClusterDriver(t, c, clusterConfig(ns))
	}, drivertest.Options{Image: testImage, ReadyTimeout: 90 * time.Second})
}

// TestNoOrphans: deleting a sandbox leaves none of its Secret, claim or pod.
func TestNoOrphans(t *testing.T) {
	c := kubetest.Require(t)
	c.LockSandboxCRD(t, false)
	ns := c.Namespace(t)
	cfg := clusterConfig(ns)
	cfg.StorageSize = "16Mi"
	d := newClusterDriver(t, c, cfg)
	defer d.Close()
	id, name := drivertest.NewIDs()
	sb := drivertest.DefaultSandbox(id, name, testImage)
	if err := d.Create(t.Context(), sb); err != nil {
		t.Fatalf("Create: %v", err)
	}
	sec, err := c.Client.CoreV1().Secrets(ns).Get(t.Context(), secretName(name), metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the bootstrap Secret: %v", err)
	}
	if string(sec.Data[tokenKey]) != drivertest.SuiteToken || len(sec.OwnerReferences) != 1 || sec.OwnerReferences[0].Kind != "Sandbox" {
		t.Errorf("Secret: token ok %v, owners %v", string(sec.Data[tokenKey]) == drivertest.SuiteToken, sec.OwnerReferences)
	}
	// The controller makes the claim (no provisioner needed: it may stay Pending).
	waitFor(t, 60*time.Second, "the controller to make the claim", func() bool {
		_, err := c.Client.CoreV1().PersistentVolumeClaims(ns).Get(t.Context(), pvcName(name), metav1.GetOptions{})
		return err == nil
	})
	if ok, err := d.Delete(t.Context(), id, name); err != nil || !ok {
		t.Fatalf("Delete = %v, %v", ok, err)
	}
	waitFor(t, 60*time.Second, "Secret, claim and pods to be gone", func() bool {
		_, e1 := c.Client.CoreV1().Secrets(ns).Get(t.Context(), secretName(name), metav1.GetOptions{})
		_, e2 := c.Client.CoreV1().PersistentVolumeClaims(ns).Get(t.Context(), pvcName(name), metav1.GetOptions{})
		pods, e3 := c.Client.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{LabelSelector: drivers.LabelSandboxID + "=" + id})
		return apierrors.IsNotFound(e1) && apierrors.IsNotFound(e2) && e3 == nil && len(pods.Items) == 0
	})
}

func waitFor(t *testing.T, timeout time.Duration, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestBadEnvironment: an unknown namespace and a forbidden identity are refused
// by New with the fix named.
func TestBadEnvironment(t *testing.T) {
	c := kubetest.Require(t)
	c.LockSandboxCRD(t, false)
	ns := c.Namespace(t)

	t.Run("UnknownNamespace", func(t *testing.T) {
		_, err := New(t.Context(), clusterConfig("no-such-ns-x1"), Options{Rest: c.Config})
		if !errors.Is(err, drivers.ErrFailedPrecondition) || !strings.Contains(err.Error(), "kubectl create namespace no-such-ns-x1") {
			t.Errorf("New in a missing namespace: %v", err)
		}
	})

	t.Run("Forbidden", func(t *testing.T) {
		// A service account with no Role at all, through the real RBAC authorizer.
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "no-rights"}}
		if _, err := c.Client.CoreV1().ServiceAccounts(ns).Create(t.Context(), sa, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		rc := rest.CopyConfig(c.Config)
		rc.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":no-rights"}
		_, err := New(t.Context(), clusterConfig(ns), Options{Rest: rc})
		if !errors.Is(err, drivers.ErrFailedPrecondition) {
			t.Fatalf("New as a service account without rights: %v, want ErrFailedPrecondition", err)
		}
		for _, want := range []string{`verbs: ["list"]`, `resources: ["sandboxes"]`, "Role"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("forbidden error %q does not say %s", err, want)
			}
		}
		// Granting exactly the named rule is enough to get past it.
		role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "sandboxes"}, Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{group}, Resources: []string{resourceName}, Verbs: []string{"list"}},
		}}
		rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "sandboxes"},
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "sandboxes"},
			Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "no-rights", Namespace: ns}}}
		if _, err := c.Client.RbacV1().Roles(ns).Create(t.Context(), role, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Client.RbacV1().RoleBindings(ns).Create(t.Context(), rb, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, "the granted Role to let New through", func() bool {
			d, err := New(t.Context(), clusterConfig(ns), Options{Rest: rc})
			if err == nil {
				d.Close()
			}
			return err == nil
		})
	})

	t.Run("ImagePullFailure", func(t *testing.T) {
		ok, _ := c.NodeReady(t.Context())
		testenv.Require(t, ok, "an image pull failure needs the real node (scripts/setup-kubernetes.sh)")
		d := newClusterDriver(t, c, clusterConfig(ns))
		defer d.Close()
		id, name := drivertest.NewIDs()
		if err := d.Create(t.Context(), drivertest.DefaultSandbox(id, name, "docker.io/openshell-test/no-such-image:1")); err != nil {
			t.Fatalf("Create: %v", err)
		}
		defer d.Delete(context.WithoutCancel(t.Context()), id, name)
		var last *computev1.DriverCondition
		waitFor(t, 90*time.Second, "the pull failure in the sandbox's conditions", func() bool {
			got, err := d.Get(t.Context(), id, name)
			if err != nil {
				return false
			}
			last = drivers.FindCondition(got.GetStatus(), drivers.ConditionReady)
			return last != nil && strings.Contains(last.GetReason(), "Image")
		})
		if !strings.Contains(last.GetMessage(), "no-such-image") && !strings.Contains(last.GetMessage(), "import it") {
			t.Errorf("pull failure condition does not name the image or the fix: %v", last)
		}
	})
}

// TestUpgradeAlphaToBeta: a Sandbox written while the cluster served only v1alpha1
// is read, stopped, started and deleted by a driver after the CRD serves v1beta1
// (stored as v1beta1). The test switches the cluster's CRD and restores it.
func TestUpgradeAlphaToBeta(t *testing.T) {
	c := kubetest.RequireNode(t) // the pods run on the real node
	c.LockSandboxCRD(t, true)
	ns := c.Namespace(t)
	crds := c.Dynamic.Resource(apiextv1.SchemeGroupVersion.WithResource("customresourcedefinitions"))
	orig, err := crds.Get(t.Context(), crdName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the Sandbox CRD: %v", err)
	}
	var crd apiextv1.CustomResourceDefinition
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(orig.Object, &crd); err != nil {
		t.Fatal(err)
	}
	apply := func(ctx context.Context, mut func(*apiextv1.CustomResourceDefinition)) error {
		for {
			cur, err := crds.Get(ctx, crdName, metav1.GetOptions{})
			if err != nil {
				return err
			}
			var x apiextv1.CustomResourceDefinition
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(cur.Object, &x); err != nil {
				return err
			}
			mut(&x)
			m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&x)
			if err != nil {
				return err
			}
			cur.Object = m
			_, err = crds.Update(ctx, cur, metav1.UpdateOptions{})
			if !apierrors.IsConflict(err) {
				return err
			}
		}
	}
	setVersions := func(alphaOnly bool) func(*apiextv1.CustomResourceDefinition) {
		return func(x *apiextv1.CustomResourceDefinition) {
			x.Spec.Conversion = &apiextv1.CustomResourceConversion{Strategy: apiextv1.NoneConverter}
			for i := range x.Spec.Versions {
				v := &x.Spec.Versions[i]
				switch v.Name {
				case versionAlpha:
					v.Served, v.Storage = true, alphaOnly
				case versionBeta:
					v.Served, v.Storage = !alphaOnly, !alphaOnly
				}
			}
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := apply(ctx, func(x *apiextv1.CustomResourceDefinition) {
			x.Spec.Conversion, x.Spec.Versions = crd.Spec.Conversion, crd.Spec.Versions
		}); err != nil {
			t.Errorf("restore the Sandbox CRD: %v", err)
		}
	})

	if err := apply(t.Context(), setVersions(true)); err != nil {
		t.Fatalf("serve only v1alpha1: %v", err)
	}
	var old *Driver
	waitFor(t, 30*time.Second, "discovery to serve only v1alpha1", func() bool {
		d, err := New(t.Context(), clusterConfig(ns), Options{Rest: c.Config})
		if err != nil {
			return false
		}
		if d.APIVersion() != versionAlpha {
			d.Close()
			return false
		}
		old = d
		return true
	})
	// A driver told to use v1beta1 says the cluster does not serve it.
	forced := clusterConfig(ns)
	forced.APIVersion = versionBeta
	if _, err := New(t.Context(), forced, Options{Rest: c.Config}); !errors.Is(err, drivers.ErrFailedPrecondition) || !strings.Contains(err.Error(), "does not serve") {
		t.Errorf("api_version v1beta1 on a v1alpha1 cluster: %v", err)
	}
	id, name := drivertest.NewIDs()
	if err := old.Create(t.Context(), drivertest.DefaultSandbox(id, name, testImage)); err != nil {
		t.Fatalf("Create through v1alpha1: %v", err)
	}
	old.Close()

	if err := apply(t.Context(), setVersions(false)); err != nil {
		t.Fatalf("serve v1beta1: %v", err)
	}
	var d *Driver
	waitFor(t, 30*time.Second, "discovery to serve v1beta1", func() bool {
		nd, err := New(t.Context(), clusterConfig(ns), Options{Rest: c.Config})
		if err != nil {
			return false
		}
		if nd.APIVersion() != versionBeta {
			nd.Close()
			return false
		}
		d = nd
		return true
	})
	defer d.Close()
	isReady := func(s *computev1.DriverSandbox) bool {
		r := drivers.FindCondition(s.GetStatus(), drivers.ConditionReady)
		return r != nil && r.GetStatus() == drivers.StatusTrue
	}
	// Generous: the controller's v1beta1 watch broke while only v1alpha1 was served
	// and is set up again after a back-off.
	waitObs := func(what string, pred func(*computev1.DriverSandbox) bool) {
		t.Helper()
		waitFor(t, 200*time.Second, what, func() bool {
			got, err := d.Get(t.Context(), id, name)
			return err == nil && pred(got)
		})
	}
	waitObs("the v1alpha1 sandbox Ready through v1beta1", isReady)
	if err := d.Stop(t.Context(), id, name); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	waitObs("stopped", func(s *computev1.DriverSandbox) bool { return drivers.StopConfirmed(s.GetStatus()) })
	if err := d.Start(t.Context(), id, name); err != nil {
		t.Fatalf("Start: %v", err)
	}
	waitObs("Ready again", isReady)
	if ok, err := d.Delete(t.Context(), id, name); err != nil || !ok {
		t.Fatalf("Delete = %v, %v", ok, err)
	}
	waitFor(t, 60*time.Second, "the sandbox gone", func() bool {
		_, err := d.Get(t.Context(), id, name)
		return errors.Is(err, drivers.ErrNotFound)
	})
}
