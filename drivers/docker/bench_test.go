package docker

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers/drivertest"
)

// Create→Ready latency of the driver next to the bare engine (`docker run -d IMAGE
// sleep infinity` until running), sequential and 5 at a time. Slow, so it runs only
// with OPENSHELL_BENCH=1:
//
//	OPENSHELL_BENCH=1 go test ./drivers/docker -run TestBenchCreateToReady -v
func TestBenchCreateToReady(t *testing.T) {
	if os.Getenv("OPENSHELL_BENCH") != "1" {
		t.Skip("benchmark: set OPENSHELL_BENCH=1 to run")
	}
	requireDocker(t)
	const n = 20
	d := newTestDriver(t, testConfig(t))
	type row struct {
		name           string
		driver, engine []time.Duration
	}
	var rows []row
	for _, par := range []int{1, 5} {
		drv := drivertest.Measure(t, n, par, func(ctx context.Context) (time.Duration, func()) {
			return drivertest.CreateToReady(t, ctx, d, testImage)
		})
		eng := drivertest.Measure(t, n, par, func(ctx context.Context) (time.Duration, func()) { return engineRunToRunning(t, ctx) })
		rows = append(rows, row{fmt.Sprintf("%d sandboxes, %d at a time", n, par), drv, eng})
	}
	for _, r := range rows {
		dp50, dp99 := drivertest.Percentile(r.driver, 50), drivertest.Percentile(r.driver, 99)
		ep50, ep99 := drivertest.Percentile(r.engine, 50), drivertest.Percentile(r.engine, 99)
		t.Logf("%-28s driver create→Ready p50 %4dms p99 %4dms | docker run→running p50 %4dms p99 %4dms | ratio p50 %.2fx p99 %.2fx",
			r.name, dp50.Milliseconds(), dp99.Milliseconds(), ep50.Milliseconds(), ep99.Milliseconds(),
			float64(dp50)/float64(ep50), float64(dp99)/float64(ep99))
	}
}

func isReadyObs(s *computev1.DriverSandbox) bool {
	return phase(s) == openshellv1.SandboxPhase_SANDBOX_PHASE_READY
}

func engineRunToRunning(t *testing.T, ctx context.Context) (time.Duration, func()) {
	label := labelTestRun + "=" + testRunID + "-engine"
	start := time.Now()
	out, err := exec.CommandContext(ctx, "docker", "run", "-d", "--label", label, testImage, "sleep", "infinity").Output()
	id := strings.TrimSpace(string(out))
	cleanup := func() { _, _ = execCommand("docker", "rm", "-f", id) }
	if err != nil {
		t.Errorf("docker run: %v", err)
		return 0, cleanup
	}
	for {
		st, err := exec.CommandContext(ctx, "docker", "inspect", "-f", "{{.State.Running}}", id).Output()
		if err == nil && strings.TrimSpace(string(st)) == "true" {
			return time.Since(start), cleanup
		}
		if ctx.Err() != nil || time.Since(start) > time.Minute {
			t.Errorf("container %s not running: %s %v", id, st, err)
			return 0, cleanup
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// BenchmarkCreateToReady is the same measurement as a Go benchmark (sequential).
func BenchmarkCreateToReady(b *testing.B) {
	requireDocker(b)
	d := newTestDriver(b, testConfig(b))
	for b.Loop() {
		id, name := drivertest.NewIDs()
		if err := d.Create(b.Context(), drivertest.DefaultSandbox(id, name, testImage)); err != nil {
			b.Fatal(err)
		}
		for {
			got, err := d.Get(b.Context(), id, "")
			if err == nil && isReadyObs(got) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		b.StopTimer()
		_, _ = d.Delete(context.Background(), id, name)
		b.StartTimer()
	}
}
