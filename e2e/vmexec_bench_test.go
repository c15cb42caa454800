package e2e

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	pb "github.com/openshell/openshell/api/openshellv1"
)

// TestBenchVMExec times `openshell sandbox exec -- true` on one VM sandbox through the
// CLI over the gateway's local Unix socket (p50/p99 of 40 runs after 3 warm-ups).
// Its baseline, a bare vsock round trip to a guest of the same driver plus a process
// start, is drivers/vm TestBenchExecBaseline; scripts/bench.sh exec runs both and
// prints the ratio from the two "BENCH" lines. Beyond the floor, the openshell side
// pays for the CLI's own start and its two calls (resolve the name, exec), the
// gateway's relay to the supervisor (over the runner's vsock bridge), the exec relay
// and the supervisor's confined spawn (the confinement helper is the supervisor
// binary re-executed, then the command). To say where the time goes it also times,
// from this process, the CLI alone (`sandbox get`: start, connect, one call) and
// ExecSandbox called directly (no CLI). Runs with OPENSHELL_BENCH=1 and E2E_DRIVER=vm.
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
	const n = 40
	measure := func(name string, f func() error) (p50, p99 time.Duration) {
		for range 3 {
			if err := f(); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
		ds := make([]time.Duration, n)
		for i := range ds {
			start := time.Now()
			if err := f(); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			ds[i] = time.Since(start)
		}
		slices.Sort(ds)
		p50, p99 = ds[n/2], ds[n*99/100]
		t.Logf("%s (%d runs): p50 %v p99 %v", name, n, p50, p99)
		return p50, p99
	}
	cli := func(args ...string) func() error {
		return func() error {
			r := h.run(t.Context(), args...)
			if r.err != nil {
				return fmt.Errorf("openshell %v: %w: %s", args, r.err, r.stderr)
			}
			return nil
		}
	}
	p50, p99 := measure("sandbox exec -- true on a VM sandbox", cli("sandbox", "exec", "-n", box, "--", "true"))

	// Where the time goes: the CLI alone, and the exec without the CLI.
	measure("CLI alone (sandbox get: start, connect, one call)", cli("sandbox", "get", box))
	api := pb.NewOpenShellClient(h.dial(t))
	sb, err := api.GetSandbox(t.Context(), &pb.GetSandboxRequest{Name: box})
	if err != nil {
		t.Fatal(err)
	}
	id := sb.GetSandbox().GetMetadata().GetId()
	measure("ExecSandbox true called directly (gateway, relay, guest)", func() error {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		s, err := api.ExecSandbox(ctx, &pb.ExecSandboxRequest{SandboxId: id, Command: []string{"true"}})
		if err != nil {
			return err
		}
		for {
			ev, err := s.Recv()
			if err == io.EOF {
				return fmt.Errorf("no exit event")
			}
			if err != nil {
				return err
			}
			if e := ev.GetExit(); e != nil {
				if e.GetExitCode() != 0 {
					return fmt.Errorf("true exited %d", e.GetExitCode())
				}
				return nil
			}
		}
	})
	// The guest's share, from the supervisor's own line per exec: starting the
	// command (confinement helper included), then running it to its end.
	logs, err := api.GetSandboxLogs(t.Context(), &pb.GetSandboxLogsRequest{SandboxId: id, Lines: 2000})
	if err != nil {
		t.Fatal(err)
	}
	phases := map[string][]int{}
	for _, l := range logs.GetLogs() {
		if l.GetMessage() != "exec relay: command ended" {
			continue
		}
		for _, k := range []string{"spawn_us", "exit_us", "drain_us"} {
			v, _ := strconv.Atoi(l.GetFields()[k])
			phases[k] = append(phases[k], v)
		}
	}
	if n := len(phases["spawn_us"]); n > 0 {
		p50 := func(k string) time.Duration {
			slices.Sort(phases[k])
			return time.Duration(phases[k][n/2]) * time.Microsecond
		}
		t.Logf("in the guest, per exec (%d execs), p50: spawn %v, then until the command exited %v (the confinement helper's start included), then output passed on %v",
			n, p50("spawn_us"), p50("exit_us"), p50("drain_us"))
	}
	fmt.Printf("BENCH vm-exec-openshell p50_us=%d p99_us=%d\n", p50.Microseconds(), p99.Microseconds())
}
