package e2e

import (
	"fmt"
	"os"
	"testing"
)

// TestBenchVMExec times `openshell sandbox exec -- true` on one VM sandbox through the
// CLI over the gateway's local Unix socket (p50/p99 of 40 runs after 3 warm-ups).
// Its baseline, a bare vsock round trip to a guest of the same driver plus a process
// start, is drivers/vm TestBenchExecBaseline; scripts/bench.sh exec runs both and
// prints the ratio from the two "BENCH" lines. Beyond the floor, the openshell side
// pays for the CLI's own start and its calls, the gateway's relay to the supervisor
// (over the runner's vsock bridge), the exec relay and the supervisor's confined
// start (a spare confinement helper, already started, applies the confinement and
// execs the command). execBreakdown says where the time goes. Runs with
// OPENSHELL_BENCH=1 and E2E_DRIVER=vm.
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
	p50, p99 := timeRuns(t, "sandbox exec -- true on a VM sandbox", 40, func() error {
		if r := h.run(t.Context(), "sandbox", "exec", "-n", box, "--", "true"); r.err != nil {
			return fmt.Errorf("openshell sandbox exec: %w: %s", r.err, r.stderr)
		}
		return nil
	})
	execBreakdown(t, h, box)
	fmt.Printf("BENCH vm-exec-openshell p50_us=%d p99_us=%d\n", p50.Microseconds(), p99.Microseconds())
}
