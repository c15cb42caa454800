package daemon

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openshell/openshell/drivers"
)

// poolCollector exports a driver's warm pools on /metrics: configured size, idle and
// booting VMs, and the idle VMs' host memory, per pool.
type poolCollector struct {
	pr                           drivers.Pooler
	size, idle, booting, idleRSS *prometheus.Desc
}

// registerPoolMetrics adds the warm-pool gauges when the driver can have pools (an
// external driver that turns out to have none reports none).
func registerPoolMetrics(reg *prometheus.Registry, drv drivers.Driver) {
	pr, ok := drv.(drivers.Pooler)
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
	pools, err := c.pr.ListPools(ctx)
	if errors.Is(err, drivers.ErrNotSupported) {
		return
	}
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.idle, err)
		return
	}
	for _, p := range pools {
		var rss int64
		for _, b := range p.GetIdleRssBytes() {
			rss += b
		}
		ch <- prometheus.MustNewConstMetric(c.size, prometheus.GaugeValue, float64(p.GetSize()), p.GetName())
		ch <- prometheus.MustNewConstMetric(c.idle, prometheus.GaugeValue, float64(p.GetIdle()), p.GetName())
		ch <- prometheus.MustNewConstMetric(c.booting, prometheus.GaugeValue, float64(p.GetBooting()), p.GetName())
		ch <- prometheus.MustNewConstMetric(c.idleRSS, prometheus.GaugeValue, float64(rss), p.GetName())
	}
}
