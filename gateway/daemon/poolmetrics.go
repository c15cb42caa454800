package daemon

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/gateway/driversel"
)

// poolCollector exports a driver's warm pools on /metrics: configured size, idle and
// booting VMs, and the idle VMs' host memory, per pool.
type poolCollector struct {
	pr                           driversel.PoolReporter
	size, idle, booting, idleRSS *prometheus.Desc
}

// registerPoolMetrics adds the warm-pool gauges when the driver has pools.
func registerPoolMetrics(reg *prometheus.Registry, drv drivers.Driver) {
	pr, ok := drv.(driversel.PoolReporter)
	if !ok {
		return
	}
	l := []string{"pool"}
	reg.MustRegister(&poolCollector{pr: pr,
		size:    prometheus.NewDesc("openshell_vm_pool_size", "Configured VMs of a warm pool.", l, nil),
		idle:    prometheus.NewDesc("openshell_vm_pool_idle", "VMs of a warm pool booted and waiting for a sandbox.", l, nil),
		booting: prometheus.NewDesc("openshell_vm_pool_booting", "VMs of a warm pool still booting.", l, nil),
		idleRSS: prometheus.NewDesc("openshell_vm_pool_idle_rss_bytes", "Host memory (RSS) of a warm pool's idle VMs together: runners, VMMs, vsock backends.", l, nil),
	})
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.size
	ch <- c.idle
	ch <- c.booting
	ch <- c.idleRSS
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pools, err := c.pr.Pools(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.idle, err)
		return
	}
	for _, p := range pools {
		var rss int64
		for _, b := range p.IdleRSSBytes {
			rss += b
		}
		ch <- prometheus.MustNewConstMetric(c.size, prometheus.GaugeValue, float64(p.Size), p.Name)
		ch <- prometheus.MustNewConstMetric(c.idle, prometheus.GaugeValue, float64(p.Idle), p.Name)
		ch <- prometheus.MustNewConstMetric(c.booting, prometheus.GaugeValue, float64(p.Booting), p.Name)
		ch <- prometheus.MustNewConstMetric(c.idleRSS, prometheus.GaugeValue, float64(rss), p.Name)
	}
}
