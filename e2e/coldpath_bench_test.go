package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestBenchColdCreate times a cold VM create → Ready through the CLI (`openshell
// sandbox create`, which returns once the sandbox is Ready), 10 one after another on
// one gateway, after one warm-up that fills the image and initramfs caches. It prints
// one "BENCH vm-cold-create" line (p50/p99) and the create timeline of the median
// sample as `sandbox get -o json` reports it. Its baseline, a bare boot of the same
// kernel to a trivial init that powers off, is vmm/qemu BenchmarkBootBare;
// scripts/bench.sh coldpath runs both and prints the ratio. Runs with
// OPENSHELL_BENCH=1 and E2E_DRIVER=vm.
func TestBenchColdCreate(t *testing.T) {
	if os.Getenv("OPENSHELL_BENCH") != "1" {
		t.Skip("benchmark: set OPENSHELL_BENCH=1")
	}
	if driver() != "vm" {
		t.Skip("VM driver only (E2E_DRIVER=vm)")
	}
	// The VM shape: the one scripts/bench.sh gives the bare boot it is compared with
	// (unset: the driver's defaults).
	var shape []string
	if v := os.Getenv("OPENSHELL_BENCH_VCPUS"); v != "" {
		shape = append(shape, "--cpu", v)
	}
	if v := os.Getenv("OPENSHELL_BENCH_MEMORY_MIB"); v != "" {
		shape = append(shape, "--memory", v+"Mi")
	}
	h := newHarness(t)
	one := func() (time.Duration, string) {
		name := uniqueName("cold")
		args := append([]string{"sandbox", "create", "--name", name, "--from", testImage(), "--timeout", "120s"}, shape...)
		r := h.mustRun(t, append(args, "--", "sleep", "1000000")...)
		got := h.mustRun(t, "sandbox", "get", name, "-o", "json")
		h.mustRun(t, "sandbox", "delete", name)
		return r.took, got.stdout
	}
	one() // warm-up: image disk and initramfs built once
	n := 10
	if v := os.Getenv("OPENSHELL_BENCH_N"); v != "" {
		fmt.Sscan(v, &n)
	}
	type sample struct {
		took time.Duration
		get  string
	}
	ss := make([]sample, n)
	for i := range ss {
		ss[i].took, ss[i].get = one()
		t.Logf("create %d: %v", i+1, ss[i].took)
	}
	slices.SortFunc(ss, func(a, b sample) int { return int(a.took - b.took) })
	p50, p99 := ss[n/2].took, ss[(n*99)/100].took
	t.Logf("cold create → Ready through the CLI (%d sequential): p50 %v p99 %v", n, p50, p99)
	fmt.Printf("BENCH vm-cold-create p50_us=%d p99_us=%d n=%d\n", p50.Microseconds(), p99.Microseconds(), n)
	fmt.Printf("TIMELINE of the median create:\n%s\n", timelineTable(ss[n/2].get))
}

// TestVMCreateTimeline: a VM sandbox's create timeline, as `sandbox get -o json`
// shows it, has every step from the gateway's receipt through the driver, runner,
// VMM and the guest's own steps to the session, in order, each step's took adding up
// to the total; `sandbox get` prints it as a table. Runs with E2E_DRIVER=vm.
func TestVMCreateTimeline(t *testing.T) {
	if driver() != "vm" {
		t.Skip("VM driver only (E2E_DRIVER=vm)")
	}
	h := newHarness(t)
	name := uniqueName("timeline")
	h.create(name, "sleep", "1000000")
	var sb struct {
		Status struct {
			Timeline []struct {
				Phase  string `json:"phase"`
				At     string `json:"at_unix_us"`
				TookUs string `json:"took_us"`
			} `json:"create_timeline"`
		} `json:"status"`
	}
	out := h.mustRun(t, "sandbox", "get", name, "-o", "json").stdout
	if err := json.Unmarshal([]byte(out), &sb); err != nil {
		t.Fatalf("sandbox get -o json: %v\n%s", err, out)
	}
	want := []string{"received", "driver", "image", "disk", "runner", "vmm", "firmware", "kernel", "init", "supervisor", "bootstrap", "ready"}
	tl := sb.Status.Timeline
	var got []string
	for _, s := range tl {
		got = append(got, s.Phase)
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("timeline phases %v, want %v\n%s", got, want, out)
	}
	var prev, sum, first int64
	for i, s := range tl {
		var at, took int64
		fmt.Sscan(s.At, &at)
		fmt.Sscan(s.TookUs, &took)
		if i == 0 {
			first = at
		} else if at < prev || took != at-prev {
			t.Errorf("step %s at %d took %d, after %d: out of order or took wrong", s.Phase, at, took, prev)
		}
		prev, sum = at, sum+took
	}
	if total := prev - first; total <= 0 || sum != total || total > int64(5*time.Minute/time.Microsecond) {
		t.Errorf("steps add up to %d µs, total %d µs", sum, total)
	}
	table := h.mustRun(t, "sandbox", "get", name).stdout
	for _, w := range []string{"Create timeline:", "PHASE", "firmware", "total"} {
		if !strings.Contains(table, w) {
			t.Errorf("sandbox get lacks %q:\n%s", w, table)
		}
	}
	t.Logf("create timeline:\n%s", timelineTable(out))
}

// timelineTable renders the create timeline of a `sandbox get -o json` document as
// "phase took" lines (empty when it has none).
func timelineTable(doc string) string {
	var sb struct {
		Status struct {
			Timeline []struct {
				Phase  string `json:"phase"`
				TookUs string `json:"took_us"`
			} `json:"create_timeline"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(doc), &sb); err != nil {
		return "(no timeline: " + err.Error() + ")"
	}
	var b strings.Builder
	for _, p := range sb.Status.Timeline {
		var us int64
		fmt.Sscan(p.TookUs, &us)
		fmt.Fprintf(&b, "  %-11s %8.1f ms\n", p.Phase, float64(us)/1000)
	}
	return b.String()
}
