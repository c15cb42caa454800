// Package kubetest connects tests to the one-node Kubernetes cluster that
// scripts/setup-kubernetes.sh builds and runs on this machine (a real etcd, kube-apiserver,
// controller-manager, scheduler, agent-sandbox controller, and a real kubelet with
// containerd when the node runs). A test asks for the cluster with Require (or RequireNode
// when it needs pods to run), gets a namespace of its own, and waits on pods with the
// helpers here. Locally a cluster that is not running skips the test; under CI=true it
// fails it (see internal/testenv).
package kubetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/openshell/openshell/internal/testenv"
)

// DefaultKubeconfig is the admin kubeconfig scripts/setup-kubernetes.sh writes.
const DefaultKubeconfig = "/var/lib/openshell/kube/admin.kubeconfig"

// NodeName is the name the script's kubelet registers its node under.
const NodeName = "openshell-node"

// PauseImage is the pod sandbox image the script builds and imports into the node's
// containerd. It is always present on the node, so a test that only needs a container
// that runs (with imagePullPolicy Never) can use it.
const PauseImage = "openshell.local/pause:1"

const setupHint = "start the test cluster with scripts/setup-kubernetes.sh"

// Cluster is a connection to the test cluster.
type Cluster struct {
	// Kubeconfig is the path of the admin kubeconfig the clients were made from.
	Kubeconfig string
	Config     *rest.Config
	Client     kubernetes.Interface
	Dynamic    dynamic.Interface
}

// KubeconfigPath is OPENSHELL_KUBECONFIG when set, else DefaultKubeconfig.
func KubeconfigPath() string {
	if p := os.Getenv("OPENSHELL_KUBECONFIG"); p != "" {
		return p
	}
	return DefaultKubeconfig
}

// Connect loads the admin kubeconfig and checks that the apiserver answers.
func Connect(ctx context.Context) (*Cluster, error) {
	path := KubeconfigPath()
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("no kubeconfig at %s (%w); %s", path, err, setupHint)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	cfg.QPS, cfg.Burst = 100, 200
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("apiserver %s does not answer: %w; %s", cfg.Host, err, setupHint)
	}
	if string(body) != "ok" {
		return nil, fmt.Errorf("apiserver %s is not ready: %q", cfg.Host, body)
	}
	return &Cluster{Kubeconfig: path, Config: cfg, Client: cs, Dynamic: dyn}, nil
}

// Require returns the test cluster, or skips (fails under CI=true) the test when its
// apiserver does not answer.
func Require(t testing.TB) *Cluster {
	t.Helper()
	c, err := Connect(context.Background())
	testenv.Require(t, err == nil, fmt.Sprint(err))
	return c
}

// RequireNode is Require for tests whose pods must really run: it also needs the
// cluster's node to be Ready.
func RequireNode(t testing.TB) *Cluster {
	t.Helper()
	c := Require(t)
	ok, err := c.NodeReady(context.Background())
	reason := "the test cluster has no Ready node (" + NodeName + "); " + setupHint
	if err != nil {
		reason = err.Error() + "; " + reason
	}
	testenv.Require(t, ok, reason)
	return c
}

// NodeReady reports whether the cluster's node is registered and Ready.
func (c *Cluster) NodeReady(ctx context.Context) (bool, error) {
	n, err := c.Client.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond.Status == corev1.ConditionTrue, nil
		}
	}
	return false, nil
}

// Namespace creates a namespace for this test (named after a random suffix, labelled
// openshell.ai/test) and deletes it when the test ends, waiting until it is gone so the
// next test starts on a clean cluster.
func (c *Cluster) Namespace(t testing.TB) string {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "ostest-" + hex.EncodeToString(b[:])
	ctx := context.Background()
	_, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"openshell.ai/test": "true"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := c.DeleteNamespace(context.Background(), name, 2*time.Minute); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return name
}

// DeleteNamespace deletes a namespace and waits until the apiserver no longer has it.
func (c *Cluster) DeleteNamespace(ctx context.Context, name string, timeout time.Duration) error {
	fg := metav1.DeletePropagationForeground
	err := c.Client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{PropagationPolicy: &fg})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete namespace %s: %w", name, err)
	}
	var last *corev1.Namespace
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		n, err := c.Client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		last = n
		return false, err
	})
	if err != nil {
		// The namespace controller says in the status what holds the deletion (content
		// or finalizers remaining, a discovery failure): that is what to look at.
		var why []string
		if last != nil {
			for _, cond := range last.Status.Conditions {
				if cond.Status == corev1.ConditionTrue {
					why = append(why, fmt.Sprintf("%s: %s", cond.Type, cond.Message))
				}
			}
		}
		return fmt.Errorf("namespace %s still there after %s (%s): %w", name, timeout, strings.Join(why, "; "), err)
	}
	return nil
}

// ErrPodFailed is returned by WaitPod when the pod reached a phase it cannot leave.
var ErrPodFailed = errors.New("pod failed")

// WaitPod polls the pod until cond holds and returns it. A pod that does not exist yet
// is waited for; a pod that has Failed ends the wait with ErrPodFailed.
func (c *Cluster) WaitPod(ctx context.Context, ns, name string, timeout time.Duration, cond func(*corev1.Pod) bool) (*corev1.Pod, error) {
	var last *corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		p, err := c.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		last = p
		if cond(p) {
			return true, nil
		}
		if p.Status.Phase == corev1.PodFailed {
			return false, fmt.Errorf("%w: %s/%s: %s %s", ErrPodFailed, ns, name, p.Status.Reason, p.Status.Message)
		}
		return false, nil
	})
	if err != nil {
		if last != nil {
			return last, fmt.Errorf("pod %s/%s (phase %s): %w", ns, name, last.Status.Phase, err)
		}
		return nil, fmt.Errorf("pod %s/%s never appeared: %w", ns, name, err)
	}
	return last, nil
}

// PodReady reports whether the pod's Ready condition is True.
func PodReady(p *corev1.Pod) bool {
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// PodRunning reports whether the pod is in phase Running.
func PodRunning(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning }
