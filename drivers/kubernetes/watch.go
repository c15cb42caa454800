package kubernetes

import (
	"context"
	"fmt"
	"sync"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
)

// Watch streams sandbox observations from two label-selected informers, one on
// the Sandboxes and one on their pods: first every sandbox as it is, then one
// observation whenever a Sandbox or its pod changes, and a deleted event when a
// Sandbox goes. The informers' resync re-sends what changed in a missed event.
// The channel is closed when ctx ends or the driver is closed.
func (d *Driver) Watch(ctx context.Context) (<-chan *computev1.WatchSandboxesEvent, error) {
	select {
	case <-d.closed:
		return nil, fmt.Errorf("kubernetes driver: closed: %w", drivers.ErrUnavailable)
	default:
	}
	ctx, cancel := context.WithCancel(ctx)
	sel := d.selector().String()
	tweak := func(o *metav1.ListOptions) { o.LabelSelector = sel }
	sbInf := dynamicinformer.NewFilteredDynamicInformer(d.dyn, gvr(d.version), d.cfg.Namespace, d.cfg.ResyncInterval, cache.Indexers{}, tweak).Informer()
	podFactory := informers.NewSharedInformerFactoryWithOptions(d.core, d.cfg.ResyncInterval,
		informers.WithNamespace(d.cfg.Namespace), informers.WithTweakListOptions(tweak))
	podInf := podFactory.Core().V1().Pods().Informer()
	if err := podInf.AddIndexers(cache.Indexers{indexOwner: ownerIndex}); err != nil {
		cancel()
		return nil, fmt.Errorf("kubernetes driver: pod index: %w", err)
	}
	w := &watcher{d: d, ctx: ctx, out: make(chan *computev1.WatchSandboxesEvent, 64), sent: map[string]*computev1.DriverSandbox{}, sbs: sbInf.GetStore(), pods: podInf.GetIndexer()}

	if _, err := sbInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.sandboxChanged(obj) },
		UpdateFunc: func(_, obj any) { w.sandboxChanged(obj) },
		DeleteFunc: func(obj any) { w.sandboxDeleted(obj) },
	}); err != nil {
		cancel()
		return nil, err
	}
	if _, err := podInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.podChanged(obj) },
		UpdateFunc: func(_, obj any) { w.podChanged(obj) },
		DeleteFunc: func(obj any) { w.podChanged(obj) },
	}); err != nil {
		cancel()
		return nil, err
	}
	report := func(what string) cache.WatchErrorHandlerWithContext {
		return func(_ context.Context, _ *cache.Reflector, err error) {
			d.log.Warn("watch interrupted; retrying", "what", what, "err", d.wrap(err, "watch", what, "watch "+what))
		}
	}
	_ = sbInf.SetWatchErrorHandlerWithContext(report(resourceName))
	_ = podInf.SetWatchErrorHandlerWithContext(report("pods"))

	d.wg.Add(2)
	go func() {
		defer d.wg.Done()
		select {
		case <-d.closed:
		case <-ctx.Done():
		}
		cancel()
	}()
	go func() {
		defer d.wg.Done()
		var inf sync.WaitGroup
		inf.Go(func() { podInf.RunWithContext(ctx) })
		// Pods first, so the first Sandbox events find their pods.
		cache.WaitForCacheSync(ctx.Done(), podInf.HasSynced)
		inf.Go(func() { sbInf.RunWithContext(ctx) })
		<-ctx.Done()
		inf.Wait()
		w.close()
	}()
	return w.out, nil
}

const indexOwner = "owner"

// ownerIndex indexes pods by the UIDs of their owners (the Sandbox).
func ownerIndex(obj any) ([]string, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return nil, nil
	}
	var out []string
	for _, r := range pod.OwnerReferences {
		out = append(out, string(r.UID))
	}
	return out, nil
}

// watcher is one Watch call's state: the informers' stores and what was sent.
type watcher struct {
	d    *Driver
	ctx  context.Context
	sbs  cache.Store
	pods cache.Indexer

	mu     sync.Mutex
	out    chan *computev1.WatchSandboxesEvent
	done   bool
	sent   map[string]*computev1.DriverSandbox // id → last observation sent
	byName map[string]string                   // Sandbox name → id
}

func (w *watcher) sandboxChanged(obj any) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	o, err := fromUnstructured(u)
	if err != nil {
		w.d.log.Warn("skipping an unreadable Sandbox", "sandbox", u.GetName(), "err", err)
		return
	}
	var pods []*corev1.Pod
	objs, _ := w.pods.ByIndex(indexOwner, string(u.GetUID()))
	for _, p := range objs {
		if pod, ok := p.(*corev1.Pod); ok {
			pods = append(pods, pod)
		}
	}
	obs := observe(o, podOf(pods))
	if obs.GetId() == "" {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.byName == nil {
		w.byName = map[string]string{}
	}
	w.byName[u.GetName()] = obs.GetId()
	if last := w.sent[obs.GetId()]; last != nil && proto.Equal(last, obs) {
		return
	}
	if w.send(&computev1.WatchSandboxesEvent{Payload: &computev1.WatchSandboxesEvent_Sandbox{Sandbox: &computev1.WatchSandboxesSandboxEvent{Sandbox: obs}}}) {
		w.sent[obs.GetId()] = obs
	}
}

func (w *watcher) sandboxDeleted(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	id := u.GetLabels()[drivers.LabelSandboxID]
	if id == "" {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.sent, id)
	delete(w.byName, u.GetName())
	w.send(&computev1.WatchSandboxesEvent{Payload: &computev1.WatchSandboxesEvent_Deleted{Deleted: &computev1.WatchSandboxesDeletedEvent{SandboxId: id}}})
}

// podChanged re-observes the pod's Sandbox from the Sandbox store.
func (w *watcher) podChanged(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	for _, r := range pod.OwnerReferences {
		if r.Kind != "Sandbox" {
			continue
		}
		item, ok, _ := w.sbs.GetByKey(pod.Namespace + "/" + r.Name)
		if ok && item.(*unstructured.Unstructured).GetUID() == r.UID {
			w.sandboxChanged(item)
		}
	}
}

// send delivers ev unless the watch has ended; the caller holds mu.
func (w *watcher) send(ev *computev1.WatchSandboxesEvent) bool {
	if w.done {
		return false
	}
	select {
	case w.out <- ev:
		return true
	case <-w.ctx.Done():
		return false
	}
}

func (w *watcher) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.done = true
	close(w.out)
}
