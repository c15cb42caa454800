package gateway

import (
	"testing"

	"github.com/openshell/openshell/api/datamodelv1"
)

func TestMergeTimeline(t *testing.T) {
	step := func(p string, at int64) *datamodelv1.TimelineStep {
		return &datamodelv1.TimelineStep{Phase: p, AtUnixUs: at}
	}
	// A driver step stamped before the gateway's (clocks of two processes) never
	// makes a negative took.
	got := mergeTimeline([]*datamodelv1.TimelineStep{step("received", 1000)},
		[]*datamodelv1.TimelineStep{step("driver", 990), step("image", 1500), step("ready", 4000)})
	want := []struct {
		phase    string
		at, took int64
	}{{"received", 1000, 0}, {"driver", 1000, 0}, {"image", 1500, 500}, {"ready", 4000, 2500}}
	if len(got) != len(want) {
		t.Fatalf("merged %v", got)
	}
	for i, w := range want {
		if got[i].GetPhase() != w.phase || got[i].GetAtUnixUs() != w.at || got[i].GetTookUs() != w.took {
			t.Errorf("step %d = %v, want %+v", i, got[i], w)
		}
	}
	if s := timelineLog(got); s != "received=0ms driver=0ms image=0ms ready=2ms total=3ms" {
		t.Errorf("log line %q", s)
	}
}
