package docker

import (
	"context"
	"fmt"
	"time"

	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/client"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/containers"
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
	w := containers.NewWatch(d, d.log, DriverName)
	// Subscribe before the first resync so nothing between the two is lost.
	sub := d.subscribe(ctx, time.Time{})
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
		defer close(w.Out)
		containers.Run(ctx, w, "docker", d.cfg.ResyncInterval, sub.Messages, sub.Err,
			func(m events.Message) int64 { return m.TimeNano },
			func(ctx context.Context, m events.Message) { handle(ctx, w, m) },
			func(since time.Time) (<-chan events.Message, <-chan error) {
				sub := d.subscribe(ctx, since)
				return sub.Messages, sub.Err
			})
	}()
	return w.Out, nil
}

// subscribe streams the container events of the driver's sandboxes from since on
// (zero: from now).
func (d *Driver) subscribe(ctx context.Context, since time.Time) client.EventsResult {
	f := d.filters().Add("type", string(events.ContainerEventType))
	for _, a := range watchedActions {
		f.Add("event", string(a))
	}
	s := ""
	if !since.IsZero() {
		s = fmt.Sprintf("%d.%09d", since.Unix(), since.Nanosecond())
	}
	return d.cli.Events(ctx, client.EventsListOptions{Filters: f, Since: s})
}

func handle(ctx context.Context, w *containers.Watch, m events.Message) {
	id := m.Actor.Attributes[LabelSandboxID]
	if id == "" {
		return
	}
	if m.Action == events.ActionDestroy {
		w.Deleted(ctx, id)
		return
	}
	if m.Action == events.ActionOOM || m.Action == events.ActionDie {
		w.Exited(ctx, id, m.Actor.ID, string(m.Action), m.Actor.Attributes["exitCode"], m.TimeNano)
	}
	w.Refresh(ctx, id)
}
