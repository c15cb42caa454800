package gateway_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers/drivertest"
)

const benchSandboxes = 1000

// benchEnv is a gateway over real gRPC + mTLS on loopback with a real SQLite store
// holding 1,000 sandboxes (created through CreateSandbox, 8 at a time).
func benchEnv(b *testing.B) *env {
	b.Helper()
	e := startEnvWith(b, b.TempDir(), drivertest.NewMemDriver(), time.Hour)
	ctx := context.Background()
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for i := range benchSandboxes {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			_, err := e.user.CreateSandbox(ctx, &openshellv1.CreateSandboxRequest{Name: fmt.Sprintf("sb-%04d", i),
				Labels: map[string]string{"bench": "yes"}, Spec: &openshellv1.SandboxSpec{}})
			if err != nil {
				mu.Lock()
				firstErr = err
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	return e
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(float64(len(sorted))*p))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkGetSandbox measures GetSandbox by name among 1,000 stored sandboxes and
// reports p50/p99 (target: p99 < 5 ms).
func BenchmarkGetSandbox(b *testing.B) {
	e := benchEnv(b)
	ctx := context.Background()
	var lat []time.Duration
	for b.Loop() {
		name := fmt.Sprintf("sb-%04d", rand.IntN(benchSandboxes))
		start := time.Now()
		if _, err := e.user.GetSandbox(ctx, &openshellv1.GetSandboxRequest{Name: name}); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	p50, p99 := percentile(lat, 0.50), percentile(lat, 0.99)
	b.ReportMetric(ms(p50), "p50-ms")
	b.ReportMetric(ms(p99), "p99-ms")
	fmt.Fprintf(os.Stdout, "GetSandbox over gRPC+mTLS, %d sandboxes stored, %d calls: p50 %.3f ms, p99 %.3f ms (target p99 < 5 ms)\n",
		benchSandboxes, len(lat), ms(p50), ms(p99))
}

// BenchmarkListSandboxes measures ListSandboxes returning all 1,000 sandboxes
// (target: < 50 ms).
func BenchmarkListSandboxes(b *testing.B) {
	e := benchEnv(b)
	ctx := context.Background()
	var lat []time.Duration
	for b.Loop() {
		start := time.Now()
		resp, err := e.user.ListSandboxes(ctx, &openshellv1.ListSandboxesRequest{Limit: benchSandboxes})
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		if n := len(resp.GetSandboxes()); n != benchSandboxes {
			b.Fatalf("listed %d sandboxes, want %d", n, benchSandboxes)
		}
	}
	slices.Sort(lat)
	p50, p99 := percentile(lat, 0.50), percentile(lat, 0.99)
	b.ReportMetric(ms(p50), "p50-ms")
	b.ReportMetric(ms(p99), "p99-ms")
	fmt.Fprintf(os.Stdout, "ListSandboxes(%d) over gRPC+mTLS, %d calls: p50 %.2f ms, p99 %.2f ms (target < 50 ms)\n",
		benchSandboxes, len(lat), ms(p50), ms(p99))
}
