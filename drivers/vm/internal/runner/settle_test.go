package runner

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestQuiet: a VMM counts as quiet only over a whole window of low CPU.
func TestQuiet(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	for _, c := range []struct {
		name string
		cpu  []time.Duration
		want bool
	}{
		{"too few samples", ms(0, 0, 0), false},
		{"idle over the window", ms(100, 100, 110, 110, 110, 120, 120), true},
		{"busy at the window's end", ms(0, 0, 0, 0, 0, 0, 50), false},
		{"busy before the window only", ms(0, 300, 400, 400, 410, 410, 410, 410, 420, 420), true},
		{"at the threshold", ms(0, 10, 10, 20, 20, 30, 30), true},
		{"just over it", ms(0, 10, 10, 20, 20, 30, 40), false},
	} {
		if got := quiet(c.cpu); got != c.want {
			t.Errorf("%s: quiet(%v) = %v, want %v", c.name, c.cpu, got, c.want)
		}
	}
}

// TestWatchSettle watches real processes: one busy for a while, then idle, is settled
// only after its busy part; an idle one within a window or so; a watch
// ended first (a claim) marks nothing.
func TestWatchSettle(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	start := func(script string) int {
		t.Helper()
		cmd := exec.Command("sh", "-c", script)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd.Process.Pid
	}
	watch := func(ctx context.Context, pid int) (settled bool, took time.Duration) {
		box := newStatusBox(Status{})
		t0 := time.Now()
		watchSettle(ctx, pid, box, log)
		st, _ := box.get()
		return st.GuestSettled, time.Since(t0)
	}
	// The shell counts in itself (no child takes the CPU), then becomes sleep.
	busy := start(`i=0; while [ $i -lt 1500000 ]; do i=$((i+1)); done; exec sleep 60`)
	settled, took := watch(t.Context(), busy)
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", busy))
	if !settled || strings.TrimSpace(string(comm)) != "sleep" || took > settleMax {
		t.Errorf("busy then idle: settled %v after %v while the process was %q; want settled once it had gone from its loop to sleep", settled, took, comm)
	}
	t.Logf("busy then idle: settled after %v", took)
	idle := start(`exec sleep 60`)
	if settled, took := watch(t.Context(), idle); !settled || took > 2*time.Second {
		t.Errorf("idle: settled %v after %v; want settled within a window or so", settled, took)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if settled, _ := watch(ctx, start(`while :; do :; done`)); settled {
		t.Error("a watch ended before the VM was quiet marked it settled")
	}
}
