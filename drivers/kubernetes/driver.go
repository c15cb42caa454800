// Package kubernetes is the Kubernetes compute driver: one agent-sandbox
// `Sandbox` object (agents.x-k8s.io) per sandbox, whose controller runs it as a
// pod. The supervisor is copied into the pod by an init container from the
// gateway's image and dials the gateway's Service over mTLS with a per-sandbox
// token kept in a Secret the Sandbox owns. It runs in-process in the gateway.
package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	k8s "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/containers"
)

// DriverName is reported in capabilities.
const DriverName = "kubernetes"

var _ drivers.Driver = (*Driver)(nil)

// Driver manages Sandbox objects in one namespace. Safe for concurrent use.
type Driver struct {
	cfg     Config
	rest    *rest.Config
	core    k8s.Interface
	dyn     dynamic.Interface
	version string // the Sandbox API version in use
	server  string // the API server URL, for errors
	info    string // capabilities' driver_version
	log     *slog.Logger
	locks   containers.Locks

	closeOnce sync.Once
	closed    chan struct{}
	wg        sync.WaitGroup // Watch goroutines
}

// Options are what New needs beyond the config (tests supply a rest.Config).
type Options struct {
	// Rest, when set, is used instead of loading a kubeconfig or in-cluster config.
	Rest *rest.Config
}

// New connects to the cluster, finds the Sandbox API version it serves and checks
// the namespace. A missing CRD, an unknown namespace or forbidden access are
// errors naming the fix.
func New(ctx context.Context, cfg Config, opts ...Options) (*Driver, error) {
	cfg = cfg.withDefaults(os.ReadFile)
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", drivers.ErrInvalidArgument, err)
	}
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	rc := o.Rest
	if rc == nil {
		var err error
		if rc, err = loadRest(cfg); err != nil {
			return nil, err
		}
	}
	d, err := connect(ctx, cfg, rc)
	if err != nil {
		return nil, err
	}
	d.log.Info("kubernetes driver ready", "server", d.server, "namespace", cfg.Namespace, "cluster", d.info)
	return d, nil
}

// connect makes the clients and checks the cluster as New describes; cfg has its
// defaults filled in.
func connect(ctx context.Context, cfg Config, rc *rest.Config) (*Driver, error) {
	rc = rest.CopyConfig(rc)
	rc.UserAgent = "openshell-gateway/kubernetes-driver"
	core, err := k8s.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes driver: client for %s: %w: %w", rc.Host, drivers.ErrInvalidArgument, err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes driver: client for %s: %w: %w", rc.Host, drivers.ErrInvalidArgument, err)
	}
	d := &Driver{
		cfg: cfg, rest: rc, core: core, dyn: dyn, server: rc.Host,
		log:    slog.Default().With("driver", DriverName),
		closed: make(chan struct{}),
	}
	sv, err := core.Discovery().ServerVersion()
	if err != nil {
		return nil, d.wrap(err, "get", "version", "reach the API server (check the kubeconfig, KUBECONFIG or the in-cluster config)")
	}
	if d.version, err = discoverVersion(core.Discovery(), cfg.APIVersion); err != nil {
		return nil, d.wrap(err, "get", resourceName, "find the Sandbox API")
	}
	d.info = fmt.Sprintf("kubernetes %s, %s/%s", sv.GitVersion, group, d.version)

	// The namespace check needs cluster-wide "get namespaces", which a gateway
	// confined to its own namespace may lack: then creates say it instead.
	if _, err := core.CoreV1().Namespaces().Get(ctx, cfg.Namespace, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("kubernetes driver: %w: namespace %q does not exist; create it (kubectl create namespace %s) or set namespace in [drivers.kubernetes]",
			drivers.ErrFailedPrecondition, cfg.Namespace, cfg.Namespace)
	} else if err != nil && !apierrors.IsForbidden(err) {
		return nil, d.wrap(err, "get", "namespaces", "check namespace "+cfg.Namespace)
	}
	// Listing Sandboxes is what the gateway does first; a forbidden list is better
	// said now than at the first reconcile.
	if _, err := d.sandboxes().List(ctx, metav1.ListOptions{Limit: 1, LabelSelector: d.selector().String()}); err != nil {
		return nil, d.wrap(err, "list", resourceName, "list Sandboxes in namespace "+cfg.Namespace)
	}
	return d, nil
}

// loadRest reads the kubeconfig named in the config, else the in-cluster config
// when running in a pod, else $KUBECONFIG or ~/.kube/config.
func loadRest(cfg Config) (*rest.Config, error) {
	if cfg.Kubeconfig == "" && os.Getenv("KUBERNETES_SERVICE_HOST") != "" {
		rc, err := rest.InClusterConfig()
		if err == nil {
			return rc, nil
		}
		if os.Getenv("KUBECONFIG") == "" {
			return nil, fmt.Errorf("kubernetes driver: in-cluster config: %w: %w (set kubeconfig in [drivers.kubernetes] when the gateway runs outside a pod)", drivers.ErrFailedPrecondition, err)
		}
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = cfg.Kubeconfig
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: cfg.Context})
	rc, err := cc.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubernetes driver: load kubeconfig: %w: %w (set kubeconfig in [drivers.kubernetes] or KUBECONFIG, or run the gateway in a pod)", drivers.ErrFailedPrecondition, err)
	}
	return rc, nil
}

// Close ends every Watch; sandboxes keep running.
func (d *Driver) Close() error {
	d.closeOnce.Do(func() {
		close(d.closed)
		d.wg.Wait()
	})
	return nil
}

// APIVersion is the agent-sandbox API version the driver uses.
func (d *Driver) APIVersion() string { return d.version }

// Namespace is where the driver keeps its objects.
func (d *Driver) Namespace() string { return d.cfg.Namespace }

// Capabilities reports the driver name, the cluster version and the default image.
func (d *Driver) Capabilities(ctx context.Context) (*computev1.GetCapabilitiesResponse, error) {
	return &computev1.GetCapabilitiesResponse{
		DriverName:    DriverName,
		DriverVersion: d.info,
		DefaultImage:  d.cfg.DefaultImage,
	}, nil
}

func (d *Driver) sandboxes() dynamic.ResourceInterface {
	return d.dyn.Resource(gvr(d.version)).Namespace(d.cfg.Namespace)
}

// selector selects what this driver instance manages.
func (d *Driver) selector() labels.Selector {
	set := labels.Set{drivers.LabelManagedBy: drivers.ManagedByValue}
	for k, v := range d.cfg.Labels {
		set[k] = v
	}
	return labels.SelectorFromSet(set)
}

func (d *Driver) selectorFor(id string) string {
	return labels.Set{drivers.LabelManagedBy: drivers.ManagedByValue, drivers.LabelSandboxID: id}.String()
}

// ValidateCreate checks the request without touching the cluster.
func (d *Driver) ValidateCreate(ctx context.Context, sb *computev1.DriverSandbox) error {
	_, err := d.cfg.plan(sb)
	return err
}

// Create makes the Sandbox and its bootstrap Secret (token and CA), owned by the
// Sandbox. It returns without waiting for the pod.
func (d *Driver) Create(ctx context.Context, sb *computev1.DriverSandbox) (retErr error) {
	p, err := d.cfg.plan(sb)
	if err != nil {
		return err
	}
	unlock := d.locks.Lock(p.id)
	defer unlock()
	if o, err := d.find(ctx, p.id, ""); err == nil {
		return fmt.Errorf("sandbox %s: %w (Sandbox %s/%s)", p.id, drivers.ErrAlreadyExists, o.GetNamespace(), o.GetName())
	} else if !errors.Is(err, drivers.ErrNotFound) {
		return err
	}
	u, err := toUnstructured(d.cfg.sandbox(p), d.version)
	if err != nil {
		return fmt.Errorf("sandbox %s: render Sandbox: %w", p.id, err)
	}
	created, err := d.sandboxes().Create(ctx, u, metav1.CreateOptions{FieldManager: "openshell"})
	if err != nil {
		if apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("sandbox %s: %w: a Sandbox named %s already exists in namespace %s", p.id, drivers.ErrAlreadyExists, p.name, d.cfg.Namespace)
		}
		return d.wrap(err, "create", resourceName, "sandbox "+p.id+": create Sandbox "+p.name)
	}
	defer func() {
		if retErr != nil {
			bg := metav1.DeletePropagationBackground
			if err := d.sandboxes().Delete(context.WithoutCancel(ctx), p.name, metav1.DeleteOptions{PropagationPolicy: &bg}); err != nil && !apierrors.IsNotFound(err) {
				retErr = errors.Join(retErr, d.wrap(err, "delete", resourceName, "undo Sandbox "+p.name))
			}
		}
	}()
	data := map[string][]byte{tokenKey: []byte(sb.GetSpec().GetSandboxToken())}
	if len(d.cfg.CAPEM) > 0 {
		data[caKey] = d.cfg.CAPEM
	}
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:            secretName(p.name),
			Namespace:       d.cfg.Namespace,
			Labels:          p.labels,
			OwnerReferences: []metav1.OwnerReference{ownerRef(created)},
		},
		Type:      corev1.SecretTypeOpaque,
		Data:      data,
		Immutable: ptr(true),
	}
	if _, err := d.core.CoreV1().Secrets(d.cfg.Namespace).Create(ctx, sec, metav1.CreateOptions{FieldManager: "openshell"}); err != nil {
		return d.wrap(err, "create", "secrets", "sandbox "+p.id+": create Secret "+sec.Name)
	}
	d.log.Info("sandbox created", "sandbox_id", p.id, "sandbox", p.name, "namespace", d.cfg.Namespace)
	return nil
}

// find returns the driver's Sandbox object for id: by name when given (and then
// checked against id), else by the id label.
func (d *Driver) find(ctx context.Context, id, name string) (*unstructured.Unstructured, error) {
	if name != "" {
		u, err := d.sandboxes().Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			if u.GetLabels()[drivers.LabelSandboxID] == id && d.selector().Matches(labels.Set(u.GetLabels())) {
				return u, nil
			}
		} else if !apierrors.IsNotFound(err) || isResourceMissing(err) {
			return nil, d.wrap(err, "get", resourceName, "sandbox "+id)
		}
	}
	list, err := d.sandboxes().List(ctx, metav1.ListOptions{LabelSelector: d.selectorFor(id)})
	if err != nil {
		return nil, d.wrap(err, "list", resourceName, "sandbox "+id)
	}
	for i := range list.Items {
		if d.selector().Matches(labels.Set(list.Items[i].GetLabels())) {
			return &list.Items[i], nil
		}
	}
	return nil, fmt.Errorf("sandbox %s: %w", id, drivers.ErrNotFound)
}

// podOf returns the sandbox's current pod (nil when none): the newest that is
// not being deleted, else the newest.
func podOf(pods []*corev1.Pod) *corev1.Pod {
	slices.SortFunc(pods, func(a, b *corev1.Pod) int {
		if (a.DeletionTimestamp == nil) != (b.DeletionTimestamp == nil) {
			if a.DeletionTimestamp == nil {
				return -1
			}
			return 1
		}
		return b.CreationTimestamp.Compare(a.CreationTimestamp.Time)
	})
	if len(pods) == 0 {
		return nil
	}
	return pods[0]
}

func (d *Driver) observeLive(ctx context.Context, u *unstructured.Unstructured) (*computev1.DriverSandbox, error) {
	o, err := fromUnstructured(u)
	if err != nil {
		return nil, err
	}
	id := u.GetLabels()[drivers.LabelSandboxID]
	pl, err := d.core.CoreV1().Pods(d.cfg.Namespace).List(ctx, metav1.ListOptions{LabelSelector: d.selectorFor(id)})
	if err != nil {
		return nil, d.wrap(err, "list", "pods", "sandbox "+id+": list its pods")
	}
	var pods []*corev1.Pod
	for i := range pl.Items {
		if owned(&pl.Items[i], u.GetUID()) {
			pods = append(pods, &pl.Items[i])
		}
	}
	return observe(o, podOf(pods)), nil
}

// owned reports whether pod belongs to the Sandbox with uid (a pod left from an
// earlier Sandbox of the same name does not).
func owned(pod *corev1.Pod, uid types.UID) bool {
	for _, r := range pod.OwnerReferences {
		if r.UID == uid {
			return true
		}
	}
	return false
}

// Get returns the current observation.
func (d *Driver) Get(ctx context.Context, id, name string) (*computev1.DriverSandbox, error) {
	u, err := d.find(ctx, id, name)
	if err != nil {
		return nil, err
	}
	return d.observeLive(ctx, u)
}

// List returns every sandbox this driver manages, found by label: a restarted
// gateway finds them all again.
func (d *Driver) List(ctx context.Context) ([]*computev1.DriverSandbox, error) {
	list, err := d.sandboxes().List(ctx, metav1.ListOptions{LabelSelector: d.selector().String()})
	if err != nil {
		return nil, d.wrap(err, "list", resourceName, "list sandboxes")
	}
	pl, err := d.core.CoreV1().Pods(d.cfg.Namespace).List(ctx, metav1.ListOptions{LabelSelector: d.selector().String()})
	if err != nil {
		return nil, d.wrap(err, "list", "pods", "list sandbox pods")
	}
	byOwner := map[types.UID][]*corev1.Pod{}
	for i := range pl.Items {
		for _, r := range pl.Items[i].OwnerReferences {
			byOwner[r.UID] = append(byOwner[r.UID], &pl.Items[i])
		}
	}
	var out []*computev1.DriverSandbox
	for i := range list.Items {
		u := &list.Items[i]
		o, err := fromUnstructured(u)
		if err != nil {
			d.log.Warn("skipping an unreadable Sandbox", "sandbox", u.GetName(), "err", err)
			continue
		}
		out = append(out, observe(o, podOf(byOwner[u.GetUID()])))
	}
	return out, nil
}

// Stop suspends the Sandbox: its pod is deleted, its /sandbox claim kept.
func (d *Driver) Stop(ctx context.Context, id, name string) error {
	return d.setSuspended(ctx, id, name, true)
}

// Start resumes a suspended Sandbox.
func (d *Driver) Start(ctx context.Context, id, name string) error {
	return d.setSuspended(ctx, id, name, false)
}

func (d *Driver) setSuspended(ctx context.Context, id, name string, suspend bool) error {
	unlock := d.locks.Lock(id)
	defer unlock()
	u, err := d.find(ctx, id, name)
	if err != nil {
		return err
	}
	verb := map[bool]string{true: "stop", false: "start"}[suspend]
	if u.GetDeletionTimestamp() != nil {
		return fmt.Errorf("sandbox %s: %w: it is being deleted, so it cannot %s", id, drivers.ErrFailedPrecondition, verb)
	}
	// Patch through the version the object was read with, so a Sandbox written as
	// v1alpha1 (replicas) is handled the same as a v1beta1 one (operatingMode).
	patched, err := d.sandboxes().Patch(ctx, u.GetName(), types.MergePatchType, suspendPatch(d.version, suspend), metav1.PatchOptions{FieldManager: "openshell"})
	if err != nil {
		return d.wrap(err, "patch", resourceName, "sandbox "+id+": "+verb)
	}
	// A CRD that stores v1alpha1 without conversion drops v1beta1's operatingMode
	// on the way to storage: the patch "succeeds" and nothing changes.
	if o, err := fromUnstructured(patched); err == nil && o.suspended != suspend {
		return fmt.Errorf("sandbox %s: %s: %w: the cluster did not keep %s (the %s CRD stores another version without conversion, which drops the field); make %s the storage version of the CRD, or set api_version in [drivers.kubernetes] to the stored version",
			id, verb, drivers.ErrFailedPrecondition, suspendPatch(d.version, suspend), crdName, d.version)
	}
	d.log.Info("sandbox "+verb+" requested", "sandbox_id", id, "sandbox", u.GetName())
	return nil
}

// Delete deletes the Sandbox; its pod, Secret and claim go with it (the garbage
// collector follows their owner references; the driver deletes the Secret and
// claim itself too, so none is left where the collector is slow or absent).
func (d *Driver) Delete(ctx context.Context, id, name string) (bool, error) {
	unlock := d.locks.Lock(id)
	defer unlock()
	u, err := d.find(ctx, id, name)
	if errors.Is(err, drivers.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	bg := metav1.DeletePropagationBackground
	if err := d.sandboxes().Delete(ctx, u.GetName(), metav1.DeleteOptions{PropagationPolicy: &bg, Preconditions: &metav1.Preconditions{UID: ptr(u.GetUID())}}); err != nil {
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return false, d.wrap(err, "delete", resourceName, "sandbox "+id+": delete Sandbox "+u.GetName())
	}
	var errs []error
	if err := d.core.CoreV1().Secrets(d.cfg.Namespace).Delete(ctx, secretName(u.GetName()), metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, d.wrap(err, "delete", "secrets", "sandbox "+id+": delete its Secret"))
	}
	if claims, _, _ := unstructured.NestedSlice(u.Object, "spec", "volumeClaimTemplates"); len(claims) > 0 {
		if err := d.deleteClaim(ctx, id, u.GetName()); err != nil {
			errs = append(errs, err)
		}
	}
	d.log.Info("sandbox deleted", "sandbox_id", id, "sandbox", u.GetName())
	return true, errors.Join(errs...)
}

// deleteClaim deletes the sandbox's /sandbox claim when it is the one made for
// this sandbox (it carries the sandbox's id label).
func (d *Driver) deleteClaim(ctx context.Context, id, name string) error {
	pvcs := d.core.CoreV1().PersistentVolumeClaims(d.cfg.Namespace)
	pvc, err := pvcs.Get(ctx, pvcName(name), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return d.wrap(err, "get", "persistentvolumeclaims", "sandbox "+id+": find its claim")
	}
	if pvc.Labels[drivers.LabelSandboxID] != id {
		return nil
	}
	err = pvcs.Delete(ctx, pvc.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &pvc.UID}})
	if err != nil && !apierrors.IsNotFound(err) {
		return d.wrap(err, "delete", "persistentvolumeclaims", "sandbox "+id+": delete its claim")
	}
	return nil
}
