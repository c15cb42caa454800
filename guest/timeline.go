package guest

import (
	"sync"

	"github.com/openshell/openshell/guest/channel/wire"
)

// The guest's own steps of a boot, stamped with CLOCK_BOOTTIME where they happen and
// sent to the host with the bootstrap acknowledgement (wire.GuestTimeline).
var timeline struct {
	mu    sync.Mutex
	steps []wire.GuestStep
}

// Stamp records that the guest step phase ended now (again: the later time counts,
// e.g. a bootstrap fetched a second time). Outside a Linux guest it does nothing.
func Stamp(phase string) {
	ns := bootTimeNs()
	if ns <= 0 {
		return
	}
	timeline.mu.Lock()
	defer timeline.mu.Unlock()
	for i := range timeline.steps {
		if timeline.steps[i].Phase == phase {
			timeline.steps[i].Ns = ns
			return
		}
	}
	timeline.steps = append(timeline.steps, wire.GuestStep{Phase: phase, Ns: ns})
}

// Timeline returns the steps stamped so far and the boot time now; ok is false when
// nothing was stamped (not a VM guest).
func Timeline() (tl wire.GuestTimeline, ok bool) {
	timeline.mu.Lock()
	defer timeline.mu.Unlock()
	if len(timeline.steps) == 0 {
		return tl, false
	}
	return wire.GuestTimeline{NowNs: bootTimeNs(), Steps: append([]wire.GuestStep(nil), timeline.steps...)}, true
}
