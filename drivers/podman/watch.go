package podman

import (
	"context"
	"fmt"
	"time"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/containers"
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
	w := containers.NewWatch(d, d.log, DriverName)
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
		defer close(w.Out)
		containers.Run(ctx, w, "podman", d.cfg.ResyncInterval, evs, errc,
			func(ev event) int64 { return ev.TimeNano },
			func(ctx context.Context, ev event) { handle(ctx, w, ev) },
			// Replay from the last event seen (whole seconds: repeats are harmless).
			func(since time.Time) (<-chan event, <-chan error) { return d.cli.events(ctx, d.selector(), since) })
	}()
	return w.Out, nil
}

func handle(ctx context.Context, w *containers.Watch, ev event) {
	id := ev.Actor.Attributes[drivers.LabelSandboxID]
	act := ev.action()
	if id == "" || !watchedActions[act] {
		return
	}
	if act == "remove" {
		w.Deleted(ctx, id)
		return
	}
	if act == "oom" || act == "died" || act == "die" {
		w.Exited(ctx, id, ev.Actor.ID, act, ev.Actor.Attributes["containerExitCode"], ev.TimeNano)
	}
	w.Refresh(ctx, id)
}
