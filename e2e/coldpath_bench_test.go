package e2e

import (
	"cmp"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/e2e/internal/timeline"
)

// TestBenchColdCreate times a cold VM create → Ready through the CLI (`openshell
// sandbox create`, which returns once the sandbox is Ready) against its baseline, a
// bare boot of the same kernel to a trivial init that powers off (vmm/qemu
// BenchmarkBootBare, one boot per run of its test binary), 10 of each on one gateway
// after one warm-up create that fills the image and initramfs caches. The two
// alternate, sample by sample, so that a host whose speed drifts (as this nested one
// does, by 20-30 % within minutes) weighs on both alike. It prints a "BENCH
// vm-bare-boot" and a "BENCH vm-cold-create" line (p50/p99), logs their ratio, and the
// create timeline of the median sample as `sandbox get -o json` reports it.
// scripts/bench.sh coldpath runs it. Runs with OPENSHELL_BENCH=1 and E2E_DRIVER=vm.
func TestBenchColdCreate(t *testing.T) {
	if os.Getenv("OPENSHELL_BENCH") != "1" {
		t.Skip("benchmark: set OPENSHELL_BENCH=1")
	}
	if driver() != "vm" {
		t.Skip("VM driver only (E2E_DRIVER=vm)")
	}
	// One VM shape for both halves: OPENSHELL_BENCH_VCPUS and _MEMORY_MIB, else the
	// VM driver's default sandbox (2 vCPUs, 2 GiB).
	vcpus, memMiB := cmp.Or(os.Getenv("OPENSHELL_BENCH_VCPUS"), "2"), cmp.Or(os.Getenv("OPENSHELL_BENCH_MEMORY_MIB"), "2048")
	shape := []string{"--cpu", vcpus, "--memory", memMiB + "Mi"}
	bareBin := filepath.Join(t.TempDir(), "qemu.test")
	build := exec.Command("go", "test", "-c", "-o", bareBin, "./vmm/qemu/")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the bare boot's benchmark: %v\n%s", err, out)
	}
	bare := func() time.Duration {
		cmd := exec.Command(bareBin, "-test.run", "^$", "-test.bench", "^BenchmarkBootBare$", "-test.benchtime", "1x", "-test.timeout", "5m")
		cmd.Dir = "../vmm/qemu"
		cmd.Env = append(os.Environ(), "OPENSHELL_BENCH_VCPUS="+vcpus, "OPENSHELL_BENCH_MEMORY_MIB="+memMiB)
		out, err := cmd.CombinedOutput()
		var us int64
		for _, line := range strings.Split(string(out), "\n") {
			if rest, ok := strings.CutPrefix(line, "BENCH vm-bare-boot p50_us="); ok {
				fmt.Sscan(rest, &us)
			}
		}
		if err != nil || us <= 0 {
			t.Fatalf("bare boot: %v\n%s", err, out)
		}
		return time.Duration(us) * time.Microsecond
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
	bare()
	n := 10
	if v := os.Getenv("OPENSHELL_BENCH_N"); v != "" {
		fmt.Sscan(v, &n)
	}
	type sample struct {
		took time.Duration
		get  string
	}
	ss := make([]sample, n)
	bs := make([]time.Duration, n)
	for i := range ss {
		// Which goes first alternates too: neither half always follows the other.
		if i%2 == 0 {
			ss[i].took, ss[i].get = one()
			bs[i] = bare()
		} else {
			bs[i] = bare()
			ss[i].took, ss[i].get = one()
		}
		t.Logf("sample %d: cold create %v, bare boot %v", i+1, ss[i].took.Round(time.Millisecond), bs[i].Round(time.Millisecond))
	}
	slices.SortFunc(ss, func(a, b sample) int { return int(a.took - b.took) })
	slices.Sort(bs)
	p50, p99 := ss[n/2].took, ss[(n*99)/100].took
	b50, b99 := bs[n/2], bs[(n*99)/100]
	t.Logf("cold create → Ready through the CLI: p50 %v p99 %v; bare boot: p50 %v p99 %v (%d each, alternating); p50 ratio %.2f",
		p50, p99, b50, b99, n, p50.Seconds()/b50.Seconds())
	fmt.Printf("BENCH vm-bare-boot p50_us=%d p99_us=%d n=%d\n", b50.Microseconds(), b99.Microseconds(), n)
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
	out := h.mustRun(t, "sandbox", "get", name, "-o", "json").stdout
	tl, err := timeline.Parse([]byte(out))
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := []string{"received", "driver", "image", "disk", "runner", "vmm", "firmware", "kernel", "init", "supervisor", "bootstrap", "ready"}
	var got []string
	for _, s := range tl {
		got = append(got, s.Phase)
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("timeline phases %v, want %v\n%s", got, want, out)
	}
	var prev, sum, first int64
	for i, s := range tl {
		at, took := s.At, s.Took
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
	tl, err := timeline.Parse([]byte(doc))
	if err != nil {
		return "(no timeline: " + err.Error() + ")"
	}
	var b strings.Builder
	for _, p := range tl {
		fmt.Fprintf(&b, "  %-11s %8.1f ms\n", p.Phase, float64(p.Took)/1000)
	}
	return b.String()
}
