package podman

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/drivers/drivertest"
)

// Create→Ready latency of the driver next to the bare engine (`podman run -d IMAGE
// sleep infinity` until running, through the same service), 20 sequential and 5 at a
// time, rootful and rootless. Slow, so it runs only with OPENSHELL_BENCH=1
// (scripts/bench.sh podman):
//
//	OPENSHELL_BENCH=1 go test ./drivers/podman -run TestBenchCreateToReady -v
func TestBenchCreateToReady(t *testing.T) {
	if os.Getenv("OPENSHELL_BENCH") != "1" {
		t.Skip("benchmark: set OPENSHELL_BENCH=1 to run")
	}
	const n = 20
	for _, md := range modes() {
		t.Run(md.name, func(t *testing.T) {
			requirePodman(t, md)
			d := newTestDriver(t, testConfig(t, md))
			for _, par := range []int{1, 5} {
				drv := drivertest.Measure(t, n, par, func(ctx context.Context) (time.Duration, func()) {
					return drivertest.CreateToReady(t, ctx, d, testImage)
				})
				eng := drivertest.Measure(t, n, par, func(ctx context.Context) (time.Duration, func()) { return engineRunToRunning(t, ctx, md) })
				dp50, dp99, ep50, ep99 := drivertest.Percentile(drv, 50), drivertest.Percentile(drv, 99), drivertest.Percentile(eng, 50), drivertest.Percentile(eng, 99)
				t.Logf("%-8s %-22s driver create→Ready p50 %4dms p99 %4dms | podman run→running p50 %4dms p99 %4dms | ratio p50 %.2fx p99 %.2fx",
					md.name, fmt.Sprintf("%d, %d at a time", n, par), dp50.Milliseconds(), dp99.Milliseconds(), ep50.Milliseconds(), ep99.Milliseconds(),
					float64(dp50)/float64(ep50), float64(dp99)/float64(ep99))
			}
		})
	}
}

func engineRunToRunning(t *testing.T, ctx context.Context, md mode) (time.Duration, func()) {
	remote := []string{"--remote", "--url", "unix://" + md.socket}
	label := labelTestRun + "=" + testRunID + "-engine"
	start := time.Now()
	out, err := exec.CommandContext(ctx, podmanBin(), append(remote, "run", "-d", "--label", label, testImage, "sleep", "infinity")...).Output()
	id := strings.TrimSpace(string(out))
	cleanup := func() { _, _ = execCommand(podmanBin(), append(remote, "rm", "-f", "-t", "0", id)...) }
	if err != nil {
		t.Errorf("podman run: %v", err)
		return 0, cleanup
	}
	for {
		st, err := exec.CommandContext(ctx, podmanBin(), append(remote, "inspect", "-f", "{{.State.Running}}", id)...).Output()
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
