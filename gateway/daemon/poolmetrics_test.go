package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openshell/openshell/api/poolv1"
	"github.com/openshell/openshell/drivers"
)

// fakePoolDriver is a driver with warm pools; only ListPools is used.
type fakePoolDriver struct {
	drivers.Driver
	drivers.Pooler
	pools []*poolv1.Pool
	err   error
}

func (f *fakePoolDriver) ListPools(context.Context) ([]*poolv1.Pool, error) { return f.pools, f.err }

// TestPoolMetrics: a driver's warm pools appear on /metrics per pool (size, idle,
// booting, the idle VMs' RSS summed); a failing report is an error, not zeros.
func TestPoolMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	drv := &fakePoolDriver{pools: []*poolv1.Pool{{Name: "small", Size: 3, Idle: 2, Booting: 1, IdleRssBytes: []int64{100, 200}}}}
	registerPoolMetrics(reg, drv)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != 1 || m.GetLabel()[0].GetValue() != "small" {
				t.Fatalf("%s: labels %v", mf.GetName(), m.GetLabel())
			}
			got[mf.GetName()] = m.GetGauge().GetValue()
		}
	}
	want := map[string]float64{"openshell_vm_pool_size": 3, "openshell_vm_pool_idle": 2, "openshell_vm_pool_booting": 1, "openshell_vm_pool_idle_rss_bytes": 300}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
	drv.err = errors.New("driver unreachable")
	if _, err := reg.Gather(); err == nil || !strings.Contains(err.Error(), "driver unreachable") {
		t.Fatalf("gather with a failing report: %v", err)
	}
	// A driver process without the pool service: no pools, no error.
	drv.err = fmt.Errorf("no DriverPools: %w", drivers.ErrNotSupported)
	if mfs, err := reg.Gather(); err != nil || len(mfs) != 0 {
		t.Fatalf("gather from a driver without pools: %v, %v", mfs, err)
	}
	// A driver without pools registers nothing.
	reg2 := prometheus.NewRegistry()
	registerPoolMetrics(reg2, struct{ drivers.Driver }{})
	if mfs, _ := reg2.Gather(); len(mfs) != 0 {
		t.Fatalf("metrics of a driver without pools: %v", mfs)
	}
}
