package vm_test

import (
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// readyAfterRestart is the bound for re-adopted sandboxes to be READY again after the
// restarted gateway answers Health.
const readyAfterRestart = 10 * time.Second

// TestVMRestartKill9 kills the gateway and the VM driver with SIGKILL (no shutdown
// path runs) while two VMs run, starts the gateway again on the same state, and checks
// the VMs were re-adopted, not rebooted: same boot id, uptime still growing, exec works.
func TestVMRestartKill9(t *testing.T) {
	r := startVMRun(t)
	names := []string{"e2e-kill-a", "e2e-kill-b"}

	// Create both at once: each create blocks until READY, and TCG boots are slow.
	t0 := time.Now()
	var wg sync.WaitGroup
	outs, errs := make([]string, len(names)), make([]error, len(names))
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], errs[i] = r.run("sandbox", "create", "--name", n, "--from", r.image, "--timeout", cliTimeout.String(), "--", "sleep", "1000000")
		}()
	}
	wg.Wait()
	for i, n := range names {
		t.Logf("$ openshell sandbox create --name %s\n%s", n, outs[i])
		if errs[i] != nil {
			r.dumpLogs()
			t.Fatalf("create %s: %v", n, errs[i])
		}
	}
	t.Logf("two creates → READY took %v", time.Since(t0))

	type guest struct {
		boot   string
		uptime float64
		pids   []int
	}
	read := func(name string) guest {
		t.Helper()
		out := strings.Fields(r.execIn(name, "sh", "-c", "cat /proc/sys/kernel/random/boot_id /proc/uptime"))
		if len(out) < 2 || len(out[0]) != 36 {
			t.Fatalf("%s: boot id / uptime output %q", name, out)
		}
		up, err := strconv.ParseFloat(out[1], 64)
		if err != nil {
			t.Fatalf("%s: uptime %q: %v", name, out[1], err)
		}
		return guest{boot: out[0], uptime: up}
	}
	before := map[string]guest{}
	for _, n := range names {
		g := read(n)
		_, rec, ok := r.sandboxDir(n)
		if !ok || rec.RunnerPID == 0 || rec.VMMPID == 0 {
			t.Fatalf("%s: no runner/QEMU pids in the driver state (%+v)", n, rec)
		}
		g.pids = []int{rec.RunnerPID, rec.VMMPID}
		before[n] = g
		t.Logf("%s: boot id %s, uptime %.2f s, runner %d, qemu %d", n, g.boot, g.uptime, rec.RunnerPID, rec.VMMPID)
	}

	drv := r.kill9GatewayAndDriver()
	for n, g := range before {
		for _, p := range g.pids {
			if !alive(p) {
				t.Fatalf("%s: VM process %d died with the gateway and driver", n, p)
			}
		}
	}

	// `gateway start` returns once the new gateway answers Health.
	r.startGateway()
	healthy := time.Now()
	var mu sync.Mutex
	readyIn := map[string]time.Duration{}
	for _, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			deadline := healthy.Add(2 * time.Minute) // measured below against the 10 s bound
			for time.Now().Before(deadline) {
				if v, _, err := r.getSandbox(n); err == nil && strings.Contains(v.Status.Phase, "READY") {
					mu.Lock()
					readyIn[n] = time.Since(healthy)
					mu.Unlock()
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	for _, n := range names {
		d, ok := readyIn[n]
		if !ok {
			r.dumpLogs()
			t.Fatalf("%s not READY within 2 min of the restarted gateway answering Health", n)
		}
		t.Logf("%s READY %v after the restarted gateway answered Health", n, d.Round(time.Millisecond))
		if d > readyAfterRestart {
			t.Errorf("%s READY only %v after Health; want ≤ %v", n, d.Round(time.Millisecond), readyAfterRestart)
		}
	}

	for _, n := range names {
		g := read(n)
		b := before[n]
		if g.boot != b.boot {
			t.Errorf("%s: boot id changed %s → %s: the VM rebooted", n, b.boot, g.boot)
		}
		if g.uptime <= b.uptime {
			t.Errorf("%s: uptime %.2f s not larger than before the kill (%.2f s): the VM rebooted", n, g.uptime, b.uptime)
		}
		if _, rec, _ := r.sandboxDir(n); rec.RunnerPID != b.pids[0] || rec.VMMPID != b.pids[1] {
			t.Errorf("%s: VM processes changed %v → [%d %d]", n, b.pids, rec.RunnerPID, rec.VMMPID)
		}
		if out := r.execIn(n, "sh", "-c", "echo exec-ok-$((40+2))"); out != "exec-ok-42" {
			t.Errorf("%s: exec after restart printed %q", n, out)
		}
	}
	if alive(drv) {
		t.Errorf("the killed driver (pid %d) is alive", drv)
	}

	// Delete both: nothing may be left (runner, QEMU, vsock backend, state dirs).
	dirs := map[string]string{}
	for _, n := range names {
		d, _, _ := r.sandboxDir(n)
		dirs[n] = d
		r.deleteAndWaitGone(n, 2*time.Minute)
	}
	for n, d := range dirs {
		for _, p := range before[n].pids {
			waitDead(t, n, p, 30*time.Second)
		}
		waitNoProcs(t, d, 30*time.Second)
		waitGone(t, d, 30*time.Second)
	}
	if p := r.qemuProcs(); len(p) != 0 {
		t.Errorf("processes left behind: %v", p)
	}
}

// waitDead waits until pid has exited.
func waitDead(t *testing.T, what string, pid int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Errorf("%s: process %d still alive %v after delete", what, pid, timeout)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}
