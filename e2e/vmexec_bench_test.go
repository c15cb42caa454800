package e2e

import (
	"fmt"
	"os"
	"slices"
	"testing"
	"time"
)

// TestBenchVMExec times `openshell sandbox exec -- true` on one VM sandbox through the
// CLI over the gateway's local Unix socket (p50/p99 of 40 runs after 3 warm-ups).
// Its baseline, a bare vsock round trip to a guest of the same driver plus a process
// start, is drivers/vm TestBenchExecBaseline; scripts/bench.sh exec runs both and
// prints the ratio from the two "BENCH" lines. Beyond the floor, the openshell side
// pays for the CLI's own start, the gateway's relay, the SSH session the supervisor
// serves the exec on (its handshake runs in the guest, under TCG here) and the
// supervisor's confined spawn. Runs with OPENSHELL_BENCH=1 and E2E_DRIVER=vm.
func TestBenchVMExec(t *testing.T) {
	if os.Getenv("OPENSHELL_BENCH") != "1" {
		t.Skip("benchmark: set OPENSHELL_BENCH=1")
	}
	if driver() != "vm" {
		t.Skip("VM driver only (E2E_DRIVER=vm)")
	}
	h := newHarness(t)
	box := uniqueName("vmexec")
	h.create(box, "sleep", "1000000")
	run := func() time.Duration {
		start := time.Now()
		r := h.run(t.Context(), "sandbox", "exec", "-n", box, "--", "true")
		if r.err != nil {
			t.Fatalf("openshell sandbox exec -- true: %v: %s", r.err, r.stderr)
		}
		return time.Since(start)
	}
	for range 3 {
		run()
	}
	const n = 40
	ds := make([]time.Duration, n)
	for i := range ds {
		ds[i] = run()
	}
	slices.Sort(ds)
	p50, p99 := ds[n/2], ds[n*99/100]
	t.Logf("sandbox exec -- true on a VM sandbox (%d runs): p50 %v p99 %v", n, p50, p99)
	fmt.Printf("BENCH vm-exec-openshell p50_us=%d p99_us=%d\n", p50.Microseconds(), p99.Microseconds())
}
