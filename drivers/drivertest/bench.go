package drivertest

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/openshell/openshell/drivers"
)

// Measure runs n operations, par at a time, and returns their latencies; the
// cleanups op returns run after all measurements so they do not load the engine
// during them.
func Measure(t testing.TB, n, par int, op func(ctx context.Context) (time.Duration, func())) []time.Duration {
	t.Helper()
	var (
		mu       sync.Mutex
		lat      []time.Duration
		cleanups []func()
		wg       sync.WaitGroup
	)
	sem := make(chan struct{}, par)
	for range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			d, cleanup := op(t.Context())
			mu.Lock()
			lat = append(lat, d)
			cleanups = append(cleanups, cleanup)
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, c := range cleanups {
		c()
	}
	return lat
}

// CreateToReady creates a default sandbox of image and returns how long it took to
// report READY (polled every 5 ms, up to a minute), and its cleanup.
func CreateToReady(t testing.TB, ctx context.Context, d drivers.Driver, image string) (time.Duration, func()) {
	id, name := NewIDs()
	sb := DefaultSandbox(id, name, image)
	cleanup := func() { _, _ = d.Delete(context.Background(), id, name) }
	start := time.Now()
	if err := d.Create(ctx, sb); err != nil {
		t.Errorf("Create: %v", err)
		return 0, cleanup
	}
	for {
		got, err := d.Get(ctx, id, "")
		if err == nil && isReady(got) {
			return time.Since(start), cleanup
		}
		if ctx.Err() != nil || time.Since(start) > time.Minute {
			t.Errorf("sandbox %s not ready: %v %v", id, got.GetStatus(), err)
			return 0, cleanup
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Percentile is the p-th percentile (nearest rank) of d; 0 for none.
func Percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[min(max(i-1, 0), len(s)-1)]
}
