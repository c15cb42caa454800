package podman

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
)

// Container event actions that change what a sandbox observation says.
var watchedActions = map[string]bool{
	"create": true, "init": true, "start": true, "restart": true, "died": true, "die": true,
	"stop": true, "kill": true, "oom": true, "pause": true, "unpause": true, "remove": true,
	"cleanup": true,
}

// Watch streams sandbox observations: first the current state of every sandbox, then
// one observation per relevant Podman event and a deleted event per removed container.
// Events can be missed (service restart, slow reader), so a periodic resync lists the
// containers and sends whatever changed. The channel is closed when ctx ends or the
// driver is closed.
func (d *Driver) Watch(ctx context.Context) (<-chan *computev1.WatchSandboxesEvent, error) {
	select {
	case <-d.closed:
		return nil, fmt.Errorf("podman driver: closed: %w", drivers.ErrUnavailable)
	default:
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &watcher{d: d, out: make(chan *computev1.WatchSandboxesEvent, 64), known: map[string]string{}}
	// Subscribe before the first resync so nothing between the two is lost.
	evs, errc := d.cli.events(ctx, d.selector(), time.Time{})
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
		w.run(ctx, evs, errc)
	}()
	return w.out, nil
}

type watcher struct {
	d     *Driver
	out   chan *computev1.WatchSandboxesEvent
	known map[string]string // sandbox id → fingerprint of the last observation sent
}

func (w *watcher) run(ctx context.Context, evs <-chan event, errc <-chan error) {
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
		case ev, ok := <-evs:
			if !ok {
				evs = nil // the error channel says why
				continue
			}
			backoff = 250 * time.Millisecond
			if ev.TimeNano > 0 {
				last = time.Unix(0, ev.TimeNano)
			}
			w.handle(ctx, ev)
		case err, ok := <-errc:
			if ctx.Err() != nil {
				return
			}
			if ok && err != nil && !errors.Is(err, context.Canceled) {
				log.Warn("podman event stream ended; reconnecting", "err", err, "in", backoff)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 10*time.Second)
			// Replay from the last event seen (whole seconds: repeats are harmless),
			// then resync to repair what the replay cannot (a service restart).
			evs, errc = w.d.cli.events(ctx, w.d.selector(), last)
			w.resync(ctx)
		}
	}
}

func (w *watcher) handle(ctx context.Context, ev event) {
	id := ev.Actor.Attributes[drivers.LabelSandboxID]
	act := ev.action()
	if id == "" || !watchedActions[act] {
		return
	}
	if act == "remove" {
		w.deleted(ctx, id)
		return
	}
	if act == "oom" || act == "died" || act == "die" {
		w.platformEvent(ctx, id, ev, act)
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
// is false.
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
	delete(w.known, id)
	w.send(ctx, &computev1.WatchSandboxesEvent{Payload: &computev1.WatchSandboxesEvent_Deleted{
		Deleted: &computev1.WatchSandboxesDeletedEvent{SandboxId: id},
	}})
}

func (w *watcher) platformEvent(ctx context.Context, id string, ev event, act string) {
	typ, msg := "Normal", "container exited"
	if code := ev.Actor.Attributes["containerExitCode"]; code != "" {
		msg = "container exited with code " + code
	}
	if act == "oom" {
		typ, msg = "Warning", "container ran out of memory"
	}
	w.send(ctx, &computev1.WatchSandboxesEvent{Payload: &computev1.WatchSandboxesEvent_PlatformEvent{
		PlatformEvent: &computev1.WatchSandboxesPlatformEvent{
			SandboxId: id,
			Event: &computev1.DriverPlatformEvent{
				TimestampMs: ev.TimeNano / int64(time.Millisecond),
				Source:      DriverName,
				Type:        typ,
				Reason:      "Container" + capitalize(act),
				Message:     msg,
				Metadata:    map[string]string{"container": shortID(ev.Actor.ID)},
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
