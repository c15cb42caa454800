package docker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/client"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
)

// Container actions that change what a sandbox observation says.
var watchedActions = []events.Action{
	events.ActionCreate, events.ActionStart, events.ActionRestart, events.ActionDie,
	events.ActionStop, events.ActionKill, events.ActionOOM, events.ActionPause,
	events.ActionUnPause, events.ActionDestroy,
}

// Watch streams sandbox observations: first the current state of every sandbox, then
// one observation per relevant Docker event (start, die, stop, …) and a deleted event
// per destroyed container. Events can be missed (daemon restart, slow reader), so a
// periodic resync lists the containers and sends whatever changed. The channel is
// closed when ctx ends or the driver is closed.
func (d *Driver) Watch(ctx context.Context) (<-chan *computev1.WatchSandboxesEvent, error) {
	select {
	case <-d.closed:
		return nil, fmt.Errorf("docker driver: closed: %w", drivers.ErrUnavailable)
	default:
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &watcher{d: d, out: make(chan *computev1.WatchSandboxesEvent, 64), known: map[string]string{}}
	// Subscribe before the first resync so nothing between the two is lost.
	sub := w.subscribe(ctx, "")
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
		defer close(w.out)
		w.run(ctx, sub)
	}()
	return w.out, nil
}

type watcher struct {
	d     *Driver
	out   chan *computev1.WatchSandboxesEvent
	known map[string]string // sandbox id → fingerprint of the last observation sent
}

func (w *watcher) subscribe(ctx context.Context, since string) client.EventsResult {
	f := w.d.filters().Add("type", string(events.ContainerEventType))
	for _, a := range watchedActions {
		f.Add("event", string(a))
	}
	return w.d.cli.Events(ctx, client.EventsListOptions{Filters: f, Since: since})
}

func (w *watcher) run(ctx context.Context, sub client.EventsResult) {
	log := w.d.log.With("component", "watch")
	resync := time.NewTicker(w.d.cfg.ResyncInterval)
	defer resync.Stop()
	w.resync(ctx)
	var last time.Time
	backoff := 250 * time.Millisecond
	for {
		select {
		case <-ctx.Done():
			return
		case <-resync.C:
			w.resync(ctx)
		case m, ok := <-sub.Messages:
			if !ok {
				sub.Messages = nil
				continue
			}
			backoff = 250 * time.Millisecond
			if m.TimeNano > 0 {
				last = time.Unix(0, m.TimeNano)
			}
			w.handle(ctx, m)
		case err, ok := <-sub.Err:
			if ctx.Err() != nil {
				return
			}
			if ok && err != nil && !errors.Is(err, context.Canceled) {
				log.Warn("docker event stream ended; reconnecting", "err", err, "in", backoff)
			}
			// Reconnect after a pause, replaying from the last event seen, then
			// resync to repair anything the replay cannot (e.g. a daemon restart).
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 10*time.Second)
			since := ""
			if !last.IsZero() {
				since = fmt.Sprintf("%d.%09d", last.Unix(), last.Nanosecond())
			}
			sub = w.subscribe(ctx, since)
			w.resync(ctx)
		}
	}
}

func (w *watcher) handle(ctx context.Context, m events.Message) {
	id := m.Actor.Attributes[LabelSandboxID]
	if id == "" {
		return
	}
	if m.Action == events.ActionDestroy {
		w.deleted(ctx, id)
		return
	}
	if m.Action == events.ActionOOM || m.Action == events.ActionDie {
		w.platformEvent(ctx, id, m)
	}
	sb, err := w.d.Get(ctx, id, "")
	if errors.Is(err, drivers.ErrNotFound) {
		w.deleted(ctx, id)
		return
	}
	if err != nil {
		return // the next resync repairs it
	}
	w.observed(ctx, sb, true)
}

// resync lists every sandbox and sends what changed since the last observation sent.
func (w *watcher) resync(ctx context.Context) {
	list, err := w.d.List(ctx)
	if err != nil {
		if ctx.Err() == nil {
			w.d.log.Warn("watch resync failed; retrying at the next interval", "err", err)
		}
		return
	}
	seen := map[string]bool{}
	for _, sb := range list {
		seen[sb.GetId()] = true
		w.observed(ctx, sb, false)
	}
	for id := range w.known {
		if !seen[id] {
			w.deleted(ctx, id)
		}
	}
}

// observed sends an observation, unless it is what the watcher sent last and force
// is false (events always go out: the consumer may care about the repetition).
func (w *watcher) observed(ctx context.Context, sb *computev1.DriverSandbox, force bool) {
	fp := fingerprint(sb)
	if !force && w.known[sb.GetId()] == fp {
		return
	}
	w.known[sb.GetId()] = fp
	w.send(ctx, &computev1.WatchSandboxesEvent{Payload: &computev1.WatchSandboxesEvent_Sandbox{
		Sandbox: &computev1.WatchSandboxesSandboxEvent{Sandbox: sb},
	}})
}

func (w *watcher) deleted(ctx context.Context, id string) {
	// Sent even for a sandbox never announced here: the consumer may know it from Get.
	delete(w.known, id)
	w.send(ctx, &computev1.WatchSandboxesEvent{Payload: &computev1.WatchSandboxesEvent_Deleted{
		Deleted: &computev1.WatchSandboxesDeletedEvent{SandboxId: id},
	}})
}

func (w *watcher) platformEvent(ctx context.Context, id string, m events.Message) {
	typ, msg := "Normal", "container exited"
	if code := m.Actor.Attributes["exitCode"]; code != "" {
		msg = "container exited with code " + code
	}
	if m.Action == events.ActionOOM {
		typ, msg = "Warning", "container ran out of memory"
	}
	w.send(ctx, &computev1.WatchSandboxesEvent{Payload: &computev1.WatchSandboxesEvent_PlatformEvent{
		PlatformEvent: &computev1.WatchSandboxesPlatformEvent{
			SandboxId: id,
			Event: &computev1.DriverPlatformEvent{
				TimestampMs: m.TimeNano / int64(time.Millisecond),
				Source:      DriverName,
				Type:        typ,
				Reason:      "Container" + capitalize(string(m.Action)),
				Message:     msg,
				Metadata:    map[string]string{"container": shortID(m.Actor.ID)},
			},
		},
	}})
}

func (w *watcher) send(ctx context.Context, ev *computev1.WatchSandboxesEvent) {
	select {
	case w.out <- ev:
	case <-ctx.Done():
	}
}

// fingerprint identifies an observation's content, ignoring timestamps.
func fingerprint(sb *computev1.DriverSandbox) string {
	var b strings.Builder
	st := sb.GetStatus()
	fmt.Fprintf(&b, "%s|%s|%v", st.GetInstanceId(), sb.GetName(), st.GetDeleting())
	for _, c := range st.GetConditions() {
		fmt.Fprintf(&b, "|%s=%s/%s/%s", c.GetType(), c.GetStatus(), c.GetReason(), c.GetMessage())
	}
	return b.String()
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
