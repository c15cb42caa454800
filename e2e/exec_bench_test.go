package e2e

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"testing"
	"time"

	pb "github.com/openshell/openshell/api/openshellv1"
)

// TestBenchDockerExec times `openshell sandbox exec -- true` against `docker exec
// CONTAINER true` on the same container, interleaved (one of each per round, 40
// rounds after 3 warm-ups) so that both see the same host load, and prints the p50/p99
// ratio (target ≤ 0.5) with a "BENCH docker-exec" line. Then where the openshell
// side's time goes (execBreakdown). Runs with OPENSHELL_BENCH=1 and the docker driver
// (scripts/bench.sh exec).
func TestBenchDockerExec(t *testing.T) {
	if os.Getenv("OPENSHELL_BENCH") != "1" {
		t.Skip("benchmark: set OPENSHELL_BENCH=1")
	}
	if driver() != "docker" {
		t.Skip("compares against docker exec")
	}
	h := newHarness(t)
	box := uniqueName("dexec")
	h.create(box, "sleep", "1000000")
	cid := containerID(t, box)
	osh := func() error {
		if r := h.run(t.Context(), "sandbox", "exec", "-n", box, "--", "true"); r.err != nil {
			return fmt.Errorf("openshell sandbox exec: %w: %s", r.err, r.stderr)
		}
		return nil
	}
	dck := func() error {
		if out, err := exec.CommandContext(t.Context(), "docker", "exec", cid, "true").CombinedOutput(); err != nil {
			return fmt.Errorf("docker exec: %w: %s", err, out)
		}
		return nil
	}
	const n = 40
	var o, d []time.Duration
	for i := range n + 3 {
		for _, m := range []struct {
			f   func() error
			out *[]time.Duration
		}{{osh, &o}, {dck, &d}} {
			start := time.Now()
			if err := m.f(); err != nil {
				t.Fatal(err)
			}
			if i >= 3 {
				*m.out = append(*m.out, time.Since(start))
			}
		}
	}
	o50, o99 := percentiles(o)
	d50, d99 := percentiles(d)
	t.Logf("sandbox exec -- true: p50 %v p99 %v; docker exec true: p50 %v p99 %v (%d rounds, interleaved)", o50, o99, d50, d99, n)
	execBreakdown(t, h, box)
	fmt.Printf("BENCH docker-exec openshell_p50_us=%d openshell_p99_us=%d docker_p50_us=%d docker_p99_us=%d\n",
		o50.Microseconds(), o99.Microseconds(), d50.Microseconds(), d99.Microseconds())
	fmt.Printf("exec true (docker driver): openshell p50=%.1fms p99=%.1fms | docker exec p50=%.1fms p99=%.1fms | ratio p50=%.2f p99=%.2f (target ≤ 0.5)\n",
		ms(o50), ms(o99), ms(d50), ms(d99), float64(o50)/float64(d50), float64(o99)/float64(d99))
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// percentiles sorts ds and returns its p50 and p99.
func percentiles(ds []time.Duration) (p50, p99 time.Duration) {
	slices.Sort(ds)
	return ds[len(ds)/2], ds[len(ds)*99/100]
}

// timeRuns runs f 3 times to warm up, then n times, and logs and returns p50/p99.
func timeRuns(t *testing.T, name string, n int, f func() error) (p50, p99 time.Duration) {
	t.Helper()
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
	p50, p99 = percentiles(ds)
	t.Logf("%s (%d runs): p50 %v p99 %v", name, n, p50, p99)
	return p50, p99
}

// execBreakdown logs where an exec's time goes, each part timed on its own: the CLI
// process alone (`openshell --help`: start-up, no connection), the CLI with one call
// (`sandbox get`: start, connect, one RPC), ExecSandbox called directly from this
// process (gateway, relay, supervisor; no CLI), and the supervisor's own account of
// each exec so far (its "exec relay: command ended" lines: handing the command to
// a process, until it exited, until its output was passed on).
func execBreakdown(t *testing.T, h *harness, box string) {
	t.Helper()
	const n = 20
	cli := func(args ...string) func() error {
		return func() error {
			if r := h.run(t.Context(), args...); r.err != nil {
				return fmt.Errorf("openshell %v: %w: %s", args, r.err, r.stderr)
			}
			return nil
		}
	}
	timeRuns(t, "CLI start alone (openshell --help)", n, cli("--help"))
	timeRuns(t, "CLI with one call (sandbox get)", n, cli("sandbox", "get", box))
	api := pb.NewOpenShellClient(h.dial(t))
	sb, err := api.GetSandbox(t.Context(), &pb.GetSandboxRequest{Name: box})
	if err != nil {
		t.Fatal(err)
	}
	id := sb.GetSandbox().GetMetadata().GetId()
	timeRuns(t, "ExecSandbox true called directly (gateway, relay, supervisor)", n, func() error {
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
		t.Logf("in the sandbox, per exec (%d execs), p50: hand-over to a started process %v, then until the command exited %v (confinement and exec included), then output passed on %v",
			n, p50("spawn_us"), p50("exit_us"), p50("drain_us"))
	}
}
