package vm_test

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openshell/openshell/e2e/internal/timeline"
)

// TestBenchPool measures, with OPENSHELL_BENCH=1, create → READY through the CLI
// (`openshell sandbox create`, which returns once the sandbox is READY: VM up and the
// supervisor's session live) on one gateway, side by side:
//
//   - from a warm pool of 5 VMs: 20 one after another, and 4 rounds of 5 at a time,
//     each sample or round started with the pool full (no refill boot competing);
//   - cold (a shape the pool does not serve: 520 MiB instead of 512): the same.
//
// It prints one "BENCH vm-pool-…" line per series and the ratios; the target is a
// pool p50 < 150 ms. It also prints the host CPU of the pooled creates (cpu_bench_test.go):
// an idle pooled VM's, a create's by process, and the floor that a create's CPU and
// the host's cores put under the five-at-a-time median. scripts/bench.sh pools runs it. OPENSHELL_BENCH_POOL_ONLY=1 runs
// the pool series only.
func TestBenchPool(t *testing.T) {
	if os.Getenv("OPENSHELL_BENCH") != "1" {
		t.Skip("benchmark: set OPENSHELL_BENCH=1")
	}
	const pool, size = "bench", 5
	samples := 20 // per series; OPENSHELL_BENCH_N overrides (a multiple of 5 for the 5-at-a-time series)
	if v := os.Getenv("OPENSHELL_BENCH_N"); v != "" {
		fmt.Sscan(v, &samples)
	}
	r := startPoolRun(t, pool, size)
	r.waitIdle(pool, size, 10*time.Minute)

	n := 0
	// The gateway's own measure of each sample: its create timeline from received to
	// ready, without the CLI process (start, connection, watch).
	gw := map[bool][]time.Duration{}
	var gwMu sync.Mutex
	// The host CPU of each pooled sample (one at a time) and round (five at a time).
	var cpuSeq, cpuRounds []createCPU
	gateway := func(cold bool, name string) {
		total, steps := r.createTimeline(name)
		gwMu.Lock()
		gw[cold] = append(gw[cold], total)
		gwMu.Unlock()
		t.Logf("%s: gateway timeline %s", name, steps)
		if !cold && !strings.Contains(steps, " claim=") {
			t.Errorf("%s: a pooled create's timeline has no claim step: %s", name, steps)
		}
	}
	// The guest's own profile of a sample: its supervisor's start-up steps. The line
	// is shipped once the SSH server is up too, which may be after READY.
	guestSteps := func(name string, took time.Duration) {
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			logs, err := r.run("sandbox", "logs", name)
			if err != nil {
				return
			}
			if strings.Contains(logs, "start-up steps") || time.Now().After(deadline) {
				for _, line := range strings.Split(logs, "\n") {
					if strings.Contains(line, "start-up steps") || strings.Contains(line, "main process started") {
						t.Logf("%s (took %v): %s", name, took.Round(time.Millisecond), strings.TrimSpace(line))
					}
				}
				return
			}
		}
	}
	one := func(cold bool) time.Duration {
		n++
		name := fmt.Sprintf("bench-%d", n)
		args := []string{"sandbox", "create", "--name", name, "--from", r.image, "--timeout", cliTimeout.String()}
		if cold {
			args = append(args, "--memory", "520Mi")
		}
		cpu0 := r.cpuNow()
		t0 := time.Now()
		if out, err := r.run(append(args, "--", "sleep", "1000000")...); err != nil {
			r.dumpLogs()
			t.Fatalf("create %s: %v\n%s", name, err, out)
		}
		took := time.Since(t0)
		if !cold {
			cpuSeq = append(cpuSeq, r.cpuSince(cpu0, name))
		}
		if fp := r.fromPool(name); (fp == pool) == cold {
			t.Fatalf("%s: from_pool %q (cold %v): the sample measured the wrong path", name, fp, cold)
		}
		gateway(cold, name)
		guestSteps(name, took)
		if !cold {
			// The claimed guest's whole start-up: READY comes a third of the way in.
			time.Sleep(time.Until(t0.Add(startupWindow)))
			cpuSeq[len(cpuSeq)-1].guestStartup = r.cpuSince(cpu0, name).guests
		}
		return took
	}
	del := func(names ...string) {
		for _, nm := range names {
			r.deleteAndWaitGone(nm, 2*time.Minute)
		}
	}
	seq := func(cold bool) []time.Duration {
		var out []time.Duration
		for range samples {
			if !cold {
				r.waitIdle(pool, size, 5*time.Minute)
			}
			out = append(out, one(cold))
			del(fmt.Sprintf("bench-%d", n))
		}
		return out
	}
	par := func(cold bool) []time.Duration {
		var out []time.Duration
		for range max(1, samples/size) {
			if !cold {
				r.waitIdle(pool, size, 5*time.Minute)
			}
			var (
				mu    sync.Mutex
				wg    sync.WaitGroup
				names []string
				tooks = map[string]time.Duration{}
			)
			base := n
			n += size
			cpu0 := r.cpuNow()
			for i := range size {
				wg.Add(1)
				go func() {
					defer wg.Done()
					name := fmt.Sprintf("bench-%d", base+i+1)
					args := []string{"sandbox", "create", "--name", name, "--from", r.image, "--timeout", cliTimeout.String()}
					if cold {
						args = append(args, "--memory", "520Mi")
					}
					t0 := time.Now()
					out2, err := r.run(append(args, "--", "sleep", "1000000")...)
					took := time.Since(t0)
					if err != nil {
						t.Errorf("create %s: %v\n%s", name, err, out2)
						return
					}
					mu.Lock()
					out = append(out, took)
					names = append(names, name)
					tooks[name] = took
					mu.Unlock()
				}()
			}
			wg.Wait()
			if !cold {
				cpuRounds = append(cpuRounds, r.cpuSince(cpu0, names...))
			}
			for _, nm := range names {
				if fp := r.fromPool(nm); (fp == pool) == cold {
					t.Errorf("%s: from_pool %q (cold %v)", nm, fp, cold)
				}
				gateway(cold, nm)
				guestSteps(nm, tooks[nm])
			}
			del(names...)
		}
		return out
	}
	stats := func(what string, ds []time.Duration) time.Duration {
		slices.Sort(ds)
		if len(ds) == 0 {
			t.Fatalf("%s: no samples", what)
		}
		p50, p99 := ds[len(ds)/2], ds[min(len(ds)-1, (len(ds)*99)/100)]
		fmt.Printf("BENCH vm-pool-%s p50_us=%d p99_us=%d n=%d\n", what, p50.Microseconds(), p99.Microseconds(), len(ds))
		t.Logf("%s: p50 %v p99 %v min %v max %v (n=%d)", what, p50.Round(time.Millisecond), p99.Round(time.Millisecond), ds[0].Round(time.Millisecond), ds[len(ds)-1].Round(time.Millisecond), len(ds))
		return p50
	}
	ps := r.waitIdle(pool, size, 5*time.Minute)
	for i, b := range ps.IdleRSSBytes {
		fmt.Printf("BENCH vm-pool-idle-rss vm=%d rss_mib=%.1f\n", i, float64(b)/(1<<20))
	}
	r.reportIdleCPU(5 * time.Second)
	poolSeq := stats("pool-seq", seq(false))
	poolPar := stats("pool-5x", par(false))
	reportCPU(cpuSeq, cpuRounds, size)
	if os.Getenv("OPENSHELL_BENCH_POOL_ONLY") == "1" {
		stats("pool-gateway", gw[false])
		return // the pool series alone (profiling a change); no ratio
	}
	coldSeq := stats("cold-seq", seq(true))
	coldPar := stats("cold-5x", par(true))
	poolGw, coldGw := stats("pool-gateway", gw[false]), stats("cold-gateway", gw[true])
	fmt.Printf("BENCH vm-pool gateway received->ready p50 (no CLI): pool %v, cold %v\n", poolGw.Round(time.Millisecond), coldGw.Round(time.Millisecond))
	fmt.Printf("BENCH vm-pool ratio pool/cold p50: sequential %.3f, 5 at a time %.3f (pool p50 %v / %v; target < 150 ms)\n",
		float64(poolSeq)/float64(coldSeq), float64(poolPar)/float64(coldPar), poolSeq.Round(time.Millisecond), poolPar.Round(time.Millisecond))
}

// timeline reads sandbox name's create timeline (sandbox get -o json).
func (e *env) timeline(name string) []timeline.Step {
	e.t.Helper()
	out, err := e.run("sandbox", "get", name, "-o", "json")
	if err != nil {
		e.t.Fatalf("sandbox get %s: %v\n%s", name, err, out)
	}
	tl, err := timeline.Parse([]byte(out))
	if err != nil {
		e.t.Fatalf("sandbox get %s: %v", name, err)
	}
	return tl
}

// createTimeline reads sandbox name's create timeline: the time from the gateway's
// received to ready, and the steps as "phase=ms …".
func (r *vmRun) createTimeline(name string) (time.Duration, string) {
	r.t.Helper()
	tl := r.timeline(name)
	if len(tl) < 2 || tl[len(tl)-1].Phase != "ready" {
		r.t.Fatalf("%s: create timeline %+v does not end with ready", name, tl)
	}
	var b strings.Builder
	for _, st := range tl {
		fmt.Fprintf(&b, "%s=%dms ", st.Phase, st.Took/1000)
	}
	return time.Duration(tl[len(tl)-1].At-tl[0].At) * time.Microsecond, strings.TrimSpace(b.String())
}
