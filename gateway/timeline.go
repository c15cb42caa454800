package gateway

import (
	"fmt"
	"strings"
	"time"

	"github.com/openshell/openshell/api/datamodelv1"
	"github.com/openshell/openshell/api/openshellv1"
)

// The create timeline: the gateway stamps "received" when a create arrives, the
// driver reports its own steps (DriverSandboxStatus.create_timeline), and the gateway
// adds "ready" when the sandbox first becomes Ready (backend ready and session up),
// then keeps the whole timeline in the sandbox's status.

const (
	stepReceived = "received"
	stepReady    = "ready"
)

// timelineDone reports whether the status holds a finished create timeline.
func timelineDone(st *openshellv1.SandboxStatus) bool {
	tl := st.GetCreateTimeline()
	return len(tl) > 0 && tl[len(tl)-1].GetPhase() == stepReady
}

// mergeTimeline is the gateway's steps followed by the driver's, in order (a step
// never before the one it follows), each step's took from the one before.
func mergeTimeline(gw, drv []*datamodelv1.TimelineStep) []*datamodelv1.TimelineStep {
	out := make([]*datamodelv1.TimelineStep, 0, len(gw)+len(drv)+1)
	var prev int64
	for _, src := range [][]*datamodelv1.TimelineStep{gw, drv} {
		for _, st := range src {
			at := st.GetAtUnixUs()
			if len(out) > 0 && at < prev {
				at = prev
			}
			var took int64
			if len(out) > 0 {
				took = at - prev
			}
			out = append(out, &datamodelv1.TimelineStep{Phase: st.GetPhase(), AtUnixUs: at, TookUs: took})
			prev = at
		}
	}
	return out
}

// liveTimeline is the timeline to show now: the finished one, or the steps so far.
// A sandbox seen Ready before its record was stamped (the session came up a moment
// ago, its write is under way) shows "ready" now, as that write will within
// milliseconds.
func liveTimeline(r *record, phase openshellv1.SandboxPhase, now time.Time) []*datamodelv1.TimelineStep {
	st := r.sb.GetStatus()
	if timelineDone(st) || len(st.GetCreateTimeline()) == 0 {
		return st.GetCreateTimeline()
	}
	drv := r.backend.GetCreateTimeline()
	if phase == openshellv1.SandboxPhase_SANDBOX_PHASE_READY && st.GetCreateTimeline()[0].GetPhase() == stepReceived {
		drv = append(append([]*datamodelv1.TimelineStep(nil), drv...), &datamodelv1.TimelineStep{Phase: stepReady, AtUnixUs: now.UnixMicro()})
	}
	return mergeTimeline(st.GetCreateTimeline()[:1], drv)
}

// finishTimeline closes a create's timeline when the sandbox has just become Ready:
// it reports true once per create (the caller logs it). "ready" is at now, or at the
// session's accept when the write records one (the write may land much later on a
// busy gateway).
func finishTimeline(r *record, now time.Time) bool {
	if !r.sessionAt.IsZero() && r.sessionAt.Before(now) {
		now = r.sessionAt
	}
	st := r.sb.GetStatus()
	if st.GetPhase() != openshellv1.SandboxPhase_SANDBOX_PHASE_READY || timelineDone(st) {
		return false
	}
	gw := st.GetCreateTimeline()
	if len(gw) == 0 || gw[0].GetPhase() != stepReceived {
		return false // not created through this gateway version
	}
	ready := &datamodelv1.TimelineStep{Phase: stepReady, AtUnixUs: now.UnixMicro()}
	st.CreateTimeline = mergeTimeline(gw[:1], append(append([]*datamodelv1.TimelineStep(nil), r.backend.GetCreateTimeline()...), ready))
	return true
}

// timelineLog renders a timeline for one log line: "received=0ms driver=12ms …
// total=2480ms".
func timelineLog(tl []*datamodelv1.TimelineStep) string {
	var b strings.Builder
	for _, st := range tl {
		fmt.Fprintf(&b, "%s=%dms ", st.GetPhase(), st.GetTookUs()/1000)
	}
	if len(tl) > 0 {
		fmt.Fprintf(&b, "total=%dms", (tl[len(tl)-1].GetAtUnixUs()-tl[0].GetAtUnixUs())/1000)
	}
	return strings.TrimSpace(b.String())
}
