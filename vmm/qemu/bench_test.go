package qemu_test

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/openshell/openshell/vmm"
)

// BenchmarkBootToChannel: QEMU start → guest init (modules, disks, overlay, switch
// root) → guest answers over the channel → clean power off. Compare with
// BenchmarkBootBare (same kernel and initramfs, /init powers off at once) for the
// cost of openshell's guest work:
//
//	go test -run '^$' -bench 'Boot' -benchtime 5x ./vmm/qemu/
func BenchmarkBootToChannel(b *testing.B) {
	_, _, image := requireVM(b)
	data := writableDisk(b)
	var toAnswer time.Duration
	for i := 0; b.Loop(); i++ {
		cfg := baseConfig(b, fmt.Sprintf("bench-%d", i),
			vmm.Disk{Path: image, ReadOnly: true}, vmm.Disk{Path: data})
		m := newMachine(b, cfg)
		start := time.Now()
		bootAndAsk(b, b.Context(), m, false)
		toAnswer += time.Since(start)
	}
	b.ReportMetric(float64(toAnswer.Milliseconds())/float64(b.N), "ms/boot")
}

// BenchmarkBootBare: QEMU start → kernel → trivial /init that powers off. It is the
// floor the cold create is compared with (scripts/bench.sh coldpath): it reports p50
// and p99 and prints one "BENCH vm-bare-boot" line per run (the last is the full one).
func BenchmarkBootBare(b *testing.B) {
	var ds []time.Duration
	for i := 0; b.Loop(); i++ {
		cfg := baseConfig(b, fmt.Sprintf("bare-%d", i))
		cfg.Cmdline = "openshell_test=bare"
		cfg.VCPUs, cfg.MemoryMiB = benchShape(b, cfg.VCPUs, cfg.MemoryMiB)
		m := newMachine(b, cfg)
		start := time.Now()
		if err := m.Start(b.Context()); err != nil {
			b.Fatal(err)
		}
		if err := m.Wait(b.Context()); err != nil {
			b.Fatalf("bare guest: %v\n%s", err, m.ConsoleTail(2048))
		}
		ds = append(ds, time.Since(start))
	}
	slices.Sort(ds)
	p50, p99 := ds[len(ds)/2], ds[len(ds)*99/100]
	b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
	fmt.Printf("BENCH vm-bare-boot p50_us=%d p99_us=%d n=%d\n", p50.Microseconds(), p99.Microseconds(), len(ds))
}

// benchShape is the VM shape a benchmark compared with a sandbox boots:
// OPENSHELL_BENCH_VCPUS and OPENSHELL_BENCH_MEMORY_MIB (scripts/bench.sh sets both
// halves of a comparison from one place), else the given defaults.
func benchShape(b *testing.B, vcpus, memMiB int) (int, int) {
	for _, v := range []struct {
		env string
		dst *int
	}{{"OPENSHELL_BENCH_VCPUS", &vcpus}, {"OPENSHELL_BENCH_MEMORY_MIB", &memMiB}} {
		s := os.Getenv(v.env)
		if s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			b.Fatalf("%s=%q: want a positive whole number", v.env, s)
		}
		*v.dst = n
	}
	return vcpus, memMiB
}
