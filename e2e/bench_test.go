package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestBenchVsDocker compares `openshell sandbox exec -- true` with `docker exec
// CONTAINER true` (p50/p99), and a 256 MiB upload and download with `docker cp`. It prints the
// ratios; it runs with OPENSHELL_BENCH=1 and the docker driver only.
func TestBenchVsDocker(t *testing.T) {
	if os.Getenv("OPENSHELL_BENCH") != "1" {
		t.Skip("benchmark: set OPENSHELL_BENCH=1")
	}
	if driver() != "docker" {
		t.Skip("compares against docker exec")
	}
	h := newHarness(t)
	bench := uniqueName("bench")
	h.create(bench, "sleep", "1000000")
	cid := containerID(t, bench)
	const n = 40
	measure := func(f func() error) []time.Duration {
		var ds []time.Duration
		for i := 0; i < n; i++ {
			start := time.Now()
			if err := f(); err != nil {
				t.Fatal(err)
			}
			ds = append(ds, time.Since(start))
		}
		slices.Sort(ds)
		return ds
	}
	pct := func(ds []time.Duration, p float64) time.Duration { return ds[min(len(ds)-1, int(float64(len(ds))*p))] }
	osh := measure(func() error {
		r := h.run(t.Context(), "sandbox", "exec", "-n", bench, "--", "true")
		if r.err != nil {
			return fmt.Errorf("openshell sandbox exec: %w: %s", r.err, r.stderr)
		}
		return nil
	})
	dck := measure(func() error { return exec.Command("docker", "exec", cid, "true").Run() })
	fmt.Printf("exec true: openshell p50=%v p99=%v | docker exec p50=%v p99=%v | ratio p50=%.2f p99=%.2f\n",
		pct(osh, .5), pct(osh, .99), pct(dck, .5), pct(dck, .99),
		float64(pct(osh, .5))/float64(pct(dck, .5)), float64(pct(osh, .99))/float64(pct(dck, .99)))

	src := filepath.Join(t.TempDir(), "blob256")
	writeTree(t, src, 256<<20)
	start := time.Now()
	h.mustRun(t, "sandbox", "upload", bench, src, "/tmp/up")
	up := time.Since(start)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	start = time.Now()
	if out, err := exec.CommandContext(ctx, "docker", "cp", src, cid+":/tmp/cp").CombinedOutput(); err != nil {
		t.Fatalf("docker cp: %v %s", err, out)
	}
	cp := time.Since(start)
	fmt.Printf("upload 256 MiB: openshell %v (%.0f MiB/s) | docker cp %v (%.0f MiB/s) | ratio %.2f\n",
		up, 256/up.Seconds(), cp, 256/cp.Seconds(), up.Seconds()/cp.Seconds())

	dl := t.TempDir()
	start = time.Now()
	h.mustRun(t, "sandbox", "download", bench, "/tmp/up", filepath.Join(dl, "osh"))
	down := time.Since(start)
	start = time.Now()
	if out, err := exec.CommandContext(ctx, "docker", "cp", cid+":/tmp/cp", filepath.Join(dl, "cp")).CombinedOutput(); err != nil {
		t.Fatalf("docker cp out: %v %s", err, out)
	}
	cpDown := time.Since(start)
	got, err := os.Stat(filepath.Join(dl, "osh", "big", "blob.bin"))
	if err != nil || got.Size() != 256<<20 {
		t.Fatalf("downloaded blob: %v size %v", err, got)
	}
	fmt.Printf("download 256 MiB: openshell %v (%.0f MiB/s) | docker cp %v (%.0f MiB/s) | ratio %.2f\n",
		down, 256/down.Seconds(), cpDown, 256/cpDown.Seconds(), down.Seconds()/cpDown.Seconds())
}
