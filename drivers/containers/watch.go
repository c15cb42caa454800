// Package containers holds what the container drivers (docker, podman) share
// beyond the drivers contract: the watch loop and its bookkeeping.
package containers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
)

// Observer is the part of a driver a watch reads observations from.
type Observer interface {
	Get(ctx context.Context, id, name string) (*computev1.DriverSandbox, error)
	List(ctx context.Context) ([]*computev1.DriverSandbox, error)
}

// Watch sends a driver's observations, each only when it changed since the last one
// sent for that sandbox (unless forced by an event).
type Watch struct {
	D      Observer
	Out    chan *computev1.WatchSandboxesEvent
	Log    *slog.Logger
	Source string // the driver's name, in platform events
	// Known maps a sandbox id to the Fingerprint of the last observation sent.
	Known map[string]string
}

// NewWatch returns a Watch with a buffered channel.
func NewWatch(d Observer, log *slog.Logger, source string) *Watch {
	return &Watch{D: d, Out: make(chan *computev1.WatchSandboxesEvent, 64), Log: log, Source: source, Known: map[string]string{}}
}

// Run sends every sandbox, then handles events until ctx ends, resyncing every
// resyncEvery. When the stream ends it resubscribes after a backoff, replaying from
// the last event seen, and resyncs to repair what the replay cannot (an engine
// restart). engine names the engine in the log.
func Run[E any](ctx context.Context, w *Watch, engine string, resyncEvery time.Duration,
	evs <-chan E, errc <-chan error, timeNano func(E) int64, handle func(context.Context, E),
	resubscribe func(since time.Time) (<-chan E, <-chan error)) {
	log := w.Log.With("component", "watch")
	resync := time.NewTicker(resyncEvery)
	defer resync.Stop()
	w.Resync(ctx)
	var last time.Time
	backoff := 250 * time.Millisecond
	for {
		select {
		case <-ctx.Done():
			return
		case <-resync.C:
			w.Resync(ctx)
		case ev, ok := <-evs:
			if !ok {
				evs = nil // the error channel says why
				continue
			}
			backoff = 250 * time.Millisecond
			if t := timeNano(ev); t > 0 {
				last = time.Unix(0, t)
			}
			handle(ctx, ev)
		case err, ok := <-errc:
			if ctx.Err() != nil {
				return
			}
			if ok && err != nil && !errors.Is(err, context.Canceled) {
				log.Warn(engine+" event stream ended; reconnecting", "err", err, "in", backoff)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 10*time.Second)
			evs, errc = resubscribe(last)
			w.Resync(ctx)
		}
	}
}

// Refresh sends sandbox id's current observation after an event (always: the
// consumer may care about the repetition), or a deleted event when it is gone.
func (w *Watch) Refresh(ctx context.Context, id string) {
	sb, err := w.D.Get(ctx, id, "")
	if errors.Is(err, drivers.ErrNotFound) {
		w.Deleted(ctx, id)
		return
	}
	if err != nil {
		return // the next resync repairs it
	}
	w.observed(ctx, sb, true)
}

// Resync lists every sandbox and sends what changed since the last observation sent.
func (w *Watch) Resync(ctx context.Context) {
	list, err := w.D.List(ctx)
	if err != nil {
		if ctx.Err() == nil {
			w.Log.Warn("watch resync failed; retrying at the next interval", "err", err)
		}
		return
	}
	seen := map[string]bool{}
	for _, sb := range list {
		seen[sb.GetId()] = true
		w.observed(ctx, sb, false)
	}
	for id := range w.Known {
		if !seen[id] {
			w.Deleted(ctx, id)
		}
	}
}

// observed sends an observation, unless it is what the watch sent last and force
// is false.
func (w *Watch) observed(ctx context.Context, sb *computev1.DriverSandbox, force bool) {
	fp := Fingerprint(sb)
	if !force && w.Known[sb.GetId()] == fp {
		return
	}
	w.Known[sb.GetId()] = fp
	w.send(ctx, &computev1.WatchSandboxesEvent{Payload: &computev1.WatchSandboxesEvent_Sandbox{
		Sandbox: &computev1.WatchSandboxesSandboxEvent{Sandbox: sb},
	}})
}

// Deleted sends a deleted event, even for a sandbox never announced here: the
// consumer may know it from Get.
func (w *Watch) Deleted(ctx context.Context, id string) {
	delete(w.Known, id)
	w.send(ctx, &computev1.WatchSandboxesEvent{Payload: &computev1.WatchSandboxesEvent_Deleted{
		Deleted: &computev1.WatchSandboxesDeletedEvent{SandboxId: id},
	}})
}

// Exited sends the platform event of a container that died (action "die", "died")
// or ran out of memory (action "oom"); exitCode may be "".
func (w *Watch) Exited(ctx context.Context, id, containerID, action, exitCode string, timeNano int64) {
	typ, msg := "Normal", "container exited"
	if exitCode != "" {
		msg = "container exited with code " + exitCode
	}
	if action == "oom" {
		typ, msg = "Warning", "container ran out of memory"
	}
	w.send(ctx, &computev1.WatchSandboxesEvent{Payload: &computev1.WatchSandboxesEvent_PlatformEvent{
		PlatformEvent: &computev1.WatchSandboxesPlatformEvent{
			SandboxId: id,
			Event: &computev1.DriverPlatformEvent{
				TimestampMs: timeNano / int64(time.Millisecond),
				Source:      w.Source,
				Type:        typ,
				Reason:      "Container" + capitalize(action),
				Message:     msg,
				Metadata:    map[string]string{"container": ShortID(containerID)},
			},
		},
	}})
}

func (w *Watch) send(ctx context.Context, ev *computev1.WatchSandboxesEvent) {
	select {
	case w.Out <- ev:
	case <-ctx.Done():
	}
}

// Fingerprint identifies an observation's content, ignoring timestamps.
func Fingerprint(sb *computev1.DriverSandbox) string {
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

// ShortID is a container id as the engines' CLIs print it.
func ShortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
