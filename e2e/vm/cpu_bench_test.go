package vm_test

import (
	"fmt"
	"maps"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/openshell/openshell/internal/procstat"
)

// The pool bench's CPU accounting: how much host CPU a pooled create takes, and how
// much of it is the claimed guest's (its VMM process: under emulation the guest's work
// is the VMM's CPU time). With that, the bench can say what the host's cores allow
// for creates run at the same time, next to what it measured.

// cpuSnapshot is the host's CPU use at one moment.
type cpuSnapshot struct {
	vmm  map[int]time.Duration // each VM's VMM process's own CPU time, by PID
	clis time.Duration         // this process's waited-for children (the CLI runs)
	// byName is every live process's own CPU time summed by command name (the
	// gateway, the driver, the runners, the VMMs, the vsock backends, ...).
	byName map[string]time.Duration
}

func (e *env) cpuNow() cpuSnapshot {
	s := cpuSnapshot{vmm: map[int]time.Duration{}, byName: map[string]time.Duration{}}
	byPID := map[int]time.Duration{}
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		st, err := procstat.Read(pid)
		comm, _ := os.ReadFile("/proc/" + ent.Name() + "/comm")
		if err == nil && len(comm) > 0 {
			byPID[pid] = st.CPU()
			s.byName[strings.TrimSpace(string(comm))] += byPID[pid]
		}
	}
	for _, rec := range e.vmRecords() {
		if t, ok := byPID[rec.VMMPID]; ok && rec.VMMPID > 1 {
			s.vmm[rec.VMMPID] = t
		}
	}
	s.clis = procstat.RusageCPU(syscall.RUSAGE_CHILDREN)
	return s
}

// createCPU is the CPU a create (or a round of them) took, from before its CLI ran to
// its READY.
type createCPU struct {
	guests, clis time.Duration
	byName       map[string]time.Duration // processes alive at both ends
	// guestStartup is the guest's CPU over startupWindow from before its CLI ran (one
	// at a time only): its whole start-up, READY's part and the rest (credentials,
	// egress proxy, SSH server, main process), which runs on after READY.
	guestStartup time.Duration
}

// startupWindow is long enough for a claimed guest's start-up to end (~200 ms after
// its CLI started under emulation here) and short enough that the idle guest's CPU
// over it (2-3 % of a core) stays small beside it.
const startupWindow = 1500 * time.Millisecond

// own is the CPU that the creates themselves needed: their guests, their CLIs and the
// project's host processes (gateway, driver, runners; their names start with
// "openshell-"), not the other VMs (idle, or a refilled one still warming up) nor
// anything else the host ran meanwhile.
func (c createCPU) own() time.Duration {
	d := c.guests + c.clis
	for name, t := range c.byName {
		if strings.HasPrefix(name, "openshell-") {
			d += t
		}
	}
	return d
}

// grown is the CPU time each name took between two snapshots, for the names alive at
// both that took some.
func grown(before, after map[string]time.Duration) map[string]time.Duration {
	d := map[string]time.Duration{}
	for name, t1 := range after {
		if t0, ok := before[name]; ok && t1 > t0 {
			d[name] = t1 - t0
		}
	}
	return d
}

// cpuSince is what happened between s0 and now, the guests being those of sandboxes.
func (e *env) cpuSince(s0 cpuSnapshot, sandboxes ...string) createCPU {
	s1 := e.cpuNow()
	c := createCPU{clis: s1.clis - s0.clis, byName: grown(s0.byName, s1.byName)}
	for _, name := range sandboxes {
		if _, rec, ok := e.sandboxDir(name); ok {
			c.guests += s1.vmm[rec.VMMPID] - s0.vmm[rec.VMMPID]
		}
	}
	return c
}

// reportCPU prints the median CPU of the pooled creates run one at a time and of the
// rounds run five at a time, and the floor the first puts under the second: five
// creates that each need W of CPU (own, one at a time), on n cores, cannot have their
// third (the median) READY before 3·W/n.
func reportCPU(seq, rounds []createCPU, perRound int) {
	med := func(cs []createCPU, f func(createCPU) time.Duration) time.Duration {
		ds := make([]time.Duration, 0, len(cs))
		for _, c := range cs {
			ds = append(ds, f(c))
		}
		slices.Sort(ds)
		if len(ds) == 0 {
			return 0
		}
		return ds[len(ds)/2]
	}
	ms := func(d time.Duration) int64 { return d.Milliseconds() }
	guests := func(c createCPU) time.Duration { return c.guests }
	clis := func(c createCPU) time.Duration { return c.clis }
	own := func(c createCPU) time.Duration { return c.own() }
	w := med(seq, own)
	fmt.Printf("BENCH vm-pool-cpu-seq own_ms=%d guest_ms=%d cli_ms=%d n=%d\n", ms(w), ms(med(seq, guests)), ms(med(seq, clis)), len(seq))
	fmt.Printf("BENCH vm-pool-cpu-seq guest_startup_ms=%d (the claimed guest's CPU over the %v from its CLI's start, READY at guest_ms: the rest of its start-up runs on after it)\n",
		ms(med(seq, func(c createCPU) time.Duration { return c.guestStartup })), startupWindow)
	// Where the rest goes: the median of each process name over the samples.
	names := map[string]bool{}
	for _, c := range seq {
		for n := range c.byName {
			names[n] = true
		}
	}
	var parts []string
	for _, n := range slices.Sorted(maps.Keys(names)) {
		if d := med(seq, func(c createCPU) time.Duration { return c.byName[n] }); d > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", n, ms(d)))
		}
	}
	fmt.Printf("BENCH vm-pool-cpu-seq by process (median ms; names alive before and after): %s\n", strings.Join(parts, " "))
	fmt.Printf("BENCH vm-pool-cpu-5x own_ms=%d guests_ms=%d clis_ms=%d n=%d (per round of %d)\n", ms(med(rounds, own)), ms(med(rounds, guests)), ms(med(rounds, clis)), len(rounds), perRound)
	cores := runtime.NumCPU()
	third := (perRound + 1) / 2
	fmt.Printf("BENCH vm-pool-cpu floor: %d creates at a time on %d cores, each needing %d ms of CPU (its own, the one-at-a-time median): p50 >= %d ms\n",
		perRound, cores, ms(w), ms(time.Duration(third)*w/time.Duration(cores)))
}

// reportIdleCPU prints the host CPU the idle VMs take over a while: each VMM's, and
// every process name's (a pool's VMs, runners and vsock backends when nothing else
// runs).
func (e *env) reportIdleCPU(over time.Duration) {
	s0 := e.cpuNow()
	time.Sleep(over)
	s1 := e.cpuNow()
	pct := func(d time.Duration) float64 { return 100 * float64(d) / float64(over) }
	i := 0
	for _, pid := range slices.Sorted(maps.Keys(s1.vmm)) {
		if t0, ok := s0.vmm[pid]; ok {
			fmt.Printf("BENCH vm-pool-idle-cpu vm=%d vmm_pct=%.1f\n", i, pct(s1.vmm[pid]-t0))
			i++
		}
	}
	var parts []string
	byName := grown(s0.byName, s1.byName)
	for _, n := range slices.Sorted(maps.Keys(byName)) {
		parts = append(parts, fmt.Sprintf("%s=%.1f%%", n, pct(byName[n])))
	}
	fmt.Printf("BENCH vm-pool-idle-cpu over %v, by process (%% of one core): %s\n", over, strings.Join(parts, " "))
}
