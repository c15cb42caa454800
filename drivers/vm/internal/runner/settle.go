package runner

import (
	"context"
	"log/slog"
	"time"

	"github.com/openshell/openshell/internal/procstat"
)

// A pooled VM's guest asks for its identity early in its boot, and goes on with its
// warm-up meanwhile (the identity-free part of a start: the kernel's random pool, the
// first use of the supervisor's libraries, its spare helpers): a few hundred ms of a
// core under emulation. A claim served then pays what is left of it, and so do the
// creates beside it. The runner watches the VMM's CPU once the guest waits and reports
// the VM settled (Status.GuestSettled) when it has gone quiet: the driver hands out
// settled VMs first, and counts only those as idle.
const (
	settleEvery  = 50 * time.Millisecond
	settleWindow = 300 * time.Millisecond
	// settleCPU is the most CPU the VMM may use over settleWindow to count as quiet:
	// 10 % of a core (an idle guest takes ~2 %, one warming up a whole core).
	settleCPU = 30 * time.Millisecond
	// settleMax bounds the wait: a guest still busy then is reported settled anyway.
	settleMax = 15 * time.Second
)

// quiet reports whether the VMM's CPU samples, taken every settleEvery and newest
// last, used at most settleCPU over the last settleWindow.
func quiet(cpu []time.Duration) bool {
	n := int(settleWindow/settleEvery) + 1
	if len(cpu) < n {
		return false
	}
	return cpu[len(cpu)-1]-cpu[len(cpu)-n] <= settleCPU
}

// watchSettle samples the CPU of the VMM vmm until it is quiet (or settleMax passed),
// then marks the status settled; it returns early when ctx ends (the claim) or the
// VMM is gone.
func watchSettle(ctx context.Context, vmm int, box *statusBox, log *slog.Logger) {
	start := time.Now()
	tick := time.NewTicker(settleEvery)
	defer tick.Stop()
	var cpu []time.Duration
	for {
		st, err := procstat.Read(vmm)
		if err != nil {
			return
		}
		cpu = append(cpu, st.CPU())
		if q := quiet(cpu); q || time.Since(start) >= settleMax {
			if ctx.Err() != nil {
				return
			}
			box.update(func(s *Status) { s.GuestSettled = true })
			log.Info("pooled VM settled: its guest's warm-up is over", "took", time.Since(start).Round(time.Millisecond), "quiet", q)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
