package daemon

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/gateway/driversel"
)

// fakePoolDriver is a driver with warm pools; only Pools is used.
type fakePoolDriver struct {
	drivers.Driver
	pools []driversel.PoolStat
	err   error
}

func (f *fakePoolDriver) Pools(context.Context) ([]driversel.PoolStat, error) { return f.pools, f.err }

var _ driversel.PoolReporter = (*fakePoolDriver)(nil)

// TestPoolMetrics: a driver's warm pools appear on /metrics per pool (size, idle,
// booting, the idle VMs' RSS summed); a failing report is an error, not zeros.
func TestPoolMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	drv := &fakePoolDriver{pools: []driversel.PoolStat{{Name: "small", Size: 3, Idle: 2, Booting: 1, IdleRSSBytes: []int64{100, 200}}}}
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
	drv.err = errors.New("driver doctor failed")
	if _, err := reg.Gather(); err == nil || !strings.Contains(err.Error(), "driver doctor failed") {
		t.Fatalf("gather with a failing report: %v", err)
	}
	// A driver without pools registers nothing.
	reg2 := prometheus.NewRegistry()
	registerPoolMetrics(reg2, struct{ drivers.Driver }{})
	if mfs, _ := reg2.Gather(); len(mfs) != 0 {
		t.Fatalf("metrics of a driver without pools: %v", mfs)
	}
}
