package vm_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/drivers/vm"
	"github.com/openshell/openshell/drivers/vm/internal/state"
	"github.com/openshell/openshell/internal/procstat"
	"github.com/openshell/openshell/internal/rundir"
)

// TestPoolConfigValidate: each bad pool setting is refused with an error naming the
// field and the fix.
func TestPoolConfigValidate(t *testing.T) {
	layout := t.TempDir()
	os.WriteFile(filepath.Join(layout, "index.json"), []byte("{}"), 0o600)
	base := vm.Config{StateDir: "/tmp/x", GatewayEndpoint: "127.0.0.1:17670", DefaultImage: "oci-layout:" + layout + ":t"}.WithDefaults()
	ok := base
	ok.Pools = map[string]vm.PoolConfig{"small": {Size: 2, MemoryMiB: 256}}
	if err := ok.Validate(); err != nil {
		t.Fatalf("good pool: %v", err)
	}
	for _, tc := range []struct {
		pool vm.PoolConfig
		name string
		want []string
	}{
		{vm.PoolConfig{Size: -1}, "p", []string{"pools.p.size -1", "use 0 (pool off) to 64"}},
		{vm.PoolConfig{Size: 1, MemoryMiB: 64}, "p", []string{"pools.p.memory_mib 64", "at least 128"}},
		{vm.PoolConfig{Size: 1, Image: "oci-layout:/nonexistent/layout:x"}, "p", []string{"pools.p.image", "unknown image", "no OCI layout at /nonexistent/layout"}},
		{vm.PoolConfig{Size: 1, Image: "bad ref"}, "p", []string{"pools.p.image"}},
		{vm.PoolConfig{Size: 1, DiskSize: "1Mi"}, "p", []string{"pools.p.disk_size", "at least 64Mi"}},
		{vm.PoolConfig{Size: 1, CPUs: -2}, "p", []string{"pools.p.cpus -2", "1..256"}},
		{vm.PoolConfig{Size: 1}, "Bad/Name", []string{"pools.Bad/Name", "lowercase"}},
	} {
		c := base
		c.Pools = map[string]vm.PoolConfig{tc.name: tc.pool}
		err := c.Validate()
		for _, w := range tc.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("pool %+v: Validate = %v, want it to say %q", tc.pool, err, w)
			}
		}
	}
}

// waitPool waits until pool name has idle VMs (or fails the test).
func waitPool(t *testing.T, d *vm.Driver, name string, idle int, within time.Duration) vm.PoolStatus {
	t.Helper()
	deadline := time.Now().Add(within)
	var last vm.PoolStatus
	for time.Now().Before(deadline) {
		for _, p := range d.Pools() {
			if p.Name == name {
				last = p
				if p.Idle >= idle {
					return p
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("pool %s: %d idle VMs not reached within %v; last %+v", name, idle, within, last)
	return last
}

// poolSandbox is a create request of the pool's shape (1 vCPU, 256 MiB, 64 MiB disk).
func poolSandbox(image string, env map[string]string) (*computev1.DriverSandbox, string) {
	id, name := drivertest.NewIDs()
	sb := drivertest.DefaultSandbox(id, name, image)
	sb.Spec.Template.Resources = &computev1.DriverResourceRequirements{CpuLimit: "1", MemoryLimit: "256Mi"}
	sb.Spec.Environment = env
	return sb, id
}

// createTimed creates sb and returns how long until the driver reports it Ready.
func createTimed(t *testing.T, d *vm.Driver, sb *computev1.DriverSandbox) (time.Duration, *computev1.DriverSandbox) {
	t.Helper()
	t0 := time.Now()
	if err := d.Create(t.Context(), sb); err != nil {
		t.Fatalf("Create: %v", err)
	}
	for time.Since(t0) < vmTimeout {
		got, err := d.Get(t.Context(), sb.GetId(), "")
		if err == nil && ready(got) {
			return time.Since(t0), got
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s not Ready within %v", sb.GetId(), vmTimeout)
	return 0, nil
}

// TestPoolClaimIsolationAndRestart runs a warm pool of two real QEMU guests (TCG
// here): creates of the pool's shape take a waiting VM and are Ready without a boot;
// each gets only its own identity (id, token, command, environment) and a VM of its
// own (boot ids differ, no VM serves twice); the pool refills one at a time; a create
// of another shape boots cold; the idle VMs' host memory is reported. Then the driver
// stops and a new one re-adopts the idle VMs (same runner pids) and the claimed
// sandboxes, and a claim through it works.
func TestPoolClaimIsolationAndRestart(t *testing.T) {
	_, image := vmFixture(t)
	gw := newGatewayStub(t)
	dir := shortDir(t)
	// Idle pool VMs are never deleted (shortDir's cleanup kills them): their socket
	// dirs go with the test too.
	t.Cleanup(func() { os.RemoveAll(rundir.For(filepath.Join(dir, "sb"))) })
	cfg := testConfig(t, dir, gw.addr())
	cfg.Pools = map[string]vm.PoolConfig{"t": {Size: 2}}
	cfg.MemoryMiB = 256
	d := newTestDriver(t, cfg)
	closed := false
	defer func() {
		if !closed {
			d.Close()
		}
	}()

	ps := waitPool(t, d, "t", 2, 2*vmTimeout)
	for i, rss := range ps.IdleRSSBytes {
		t.Logf("idle pooled VM %d: host RSS %.1f MiB (runner + QEMU + vsock backend, guest %d MiB, TCG)", i, float64(rss)/(1<<20), ps.MemoryMiB)
		if rss < 16<<20 {
			t.Errorf("idle pooled VM %d reports %d bytes of RSS: not measured", i, rss)
		}
	}
	idleRunners := runnerPIDsOfPool(t, dir)
	if len(idleRunners) != 2 {
		t.Fatalf("pool members on disk: %v", idleRunners)
	}
	// An idle member's VMM runs at the refill's lower priority, its runner at the
	// normal one (it answers the claim).
	for _, rec := range poolRecords(t, dir) {
		if n := niceOf(t, rec.VMMPID); n != 10 {
			t.Errorf("idle pooled VM: VMM %d at nice %d, want 10", rec.VMMPID, n)
		}
		if n := niceOf(t, rec.RunnerPID); n != 0 {
			t.Errorf("idle pooled VM: runner %d at nice %d, want 0", rec.RunnerPID, n)
		}
	}

	type got struct {
		id   string
		took time.Duration
		rep  report
	}
	var claimed []got
	for i := range 2 {
		sb, id := poolSandbox(image, map[string]string{"SECRET_OF": fmt.Sprint("sandbox-", i)})
		took, st := createTimed(t, d, sb)
		if c := drivers.FindCondition(st.GetStatus(), drivers.ConditionReady); !strings.Contains(c.GetMessage(), "guest booted") {
			t.Errorf("Ready message %q", c.GetMessage())
		}
		if fp := st.GetStatus().GetFromPool(); fp != "t" {
			t.Errorf("sandbox %s: from pool %q, want t", id, fp)
		}
		if i == 0 && took < 500*time.Millisecond {
			// The refill waits (a second) while the claimed guest starts: no VM boots
			// beside it.
			for _, p := range d.Pools() {
				if p.Name == "t" && p.Booting > 0 {
					t.Errorf("%v after the claim, %d pool VM(s) boot beside the claimed one: the refill did not wait", took, p.Booting)
				}
			}
		}
		rep := gw.next(t, id, vmTimeout)
		claimed = append(claimed, got{id, took, rep})
		t.Logf("claim %d: create → Ready %v (report %+v)", i, took, rep)
	}
	if claimed[0].rep.BootID == "" || claimed[0].rep.BootID == claimed[1].rep.BootID {
		t.Errorf("two pooled sandboxes share a guest boot: %q / %q", claimed[0].rep.BootID, claimed[1].rep.BootID)
	}
	for _, c := range claimed {
		if !c.rep.HasToken || c.rep.SandboxID != c.id {
			t.Errorf("sandbox %s: its guest reports %+v", c.id, c.rep)
		}
		if c.took > 5*time.Second {
			t.Errorf("sandbox %s: a claim took %v to Ready (a cold boot's time)", c.id, c.took)
		}
	}
	// Claimed VMs are the pool's former members; none of them is idle in the pool again.
	for _, c := range claimed {
		rec := record2(t, dir, c.id)
		if n := niceOf(t, rec.VMMPID); n != 0 {
			t.Errorf("sandbox %s: its claimed VM's VMM %d still at nice %d", c.id, rec.VMMPID, n)
		}
		if rec.RunnerPID != idleRunners[0] && rec.RunnerPID != idleRunners[1] {
			t.Errorf("sandbox %s runs on runner %d, not a pooled one %v", c.id, rec.RunnerPID, idleRunners)
		}
	}

	// The pool refills (one VM at a time) with new VMs.
	ps = waitPool(t, d, "t", 2, 2*vmTimeout)
	if ps.Claimed != 2 {
		t.Errorf("pool reports %d claimed, want 2", ps.Claimed)
	}
	for _, pid := range runnerPIDsOfPool(t, dir) {
		if pid == idleRunners[0] || pid == idleRunners[1] {
			t.Errorf("a claimed VM's runner %d is idle in the pool again", pid)
		}
	}

	// Another shape boots cold.
	cold, coldID := poolSandbox(image, nil)
	cold.Spec.Template.Resources.MemoryLimit = "300Mi"
	_, st := createTimed(t, d, cold)
	if fp := st.GetStatus().GetFromPool(); fp != "" {
		t.Errorf("a create of another shape came from pool %q", fp)
	}

	// Restart: the idle VMs and the claimed sandboxes are re-adopted.
	before := runnerPIDsOfPool(t, dir)
	d.Close()
	closed = true
	d2 := newTestDriver(t, cfg)
	defer d2.Close()
	ps = waitPool(t, d2, "t", 2, 30*time.Second)
	after := runnerPIDsOfPool(t, dir)
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Errorf("idle pool runners before the restart %v, after %v: not re-adopted", before, after)
	}
	for _, id := range []string{claimed[0].id, claimed[1].id, coldID} {
		st := waitFor(t, d2, id, "Ready after the restart", ready)
		want := "t"
		if id == coldID {
			want = ""
		}
		if fp := st.GetStatus().GetFromPool(); fp != want {
			t.Errorf("after restart, sandbox %s: from pool %q, want %q", id, fp, want)
		}
	}
	sb, id := poolSandbox(image, nil)
	took, _ := createTimed(t, d2, sb)
	if rep := gw.next(t, id, vmTimeout); rep.SandboxID != id {
		t.Errorf("claim after the restart: report %+v", rep)
	}
	t.Logf("claim after the restart: create → Ready %v", took)
	for _, id := range []string{claimed[0].id, claimed[1].id, coldID, id} {
		if _, err := d2.Delete(t.Context(), id, ""); err != nil {
			t.Errorf("Delete %s: %v", id, err)
		}
	}
}

// runnerPIDsOfPool lists the runner pids of the idle pool members on disk, sorted.
func runnerPIDsOfPool(t *testing.T, stateDir string) []int {
	t.Helper()
	var out []int
	for _, rec := range poolRecords(t, stateDir) {
		out = append(out, rec.RunnerPID)
	}
	slices.Sort(out)
	return out
}

// poolRecords reads the state records of the idle pool members on disk.
func poolRecords(t *testing.T, stateDir string) []*state.Record {
	t.Helper()
	var out []*state.Record
	ents, _ := os.ReadDir(filepath.Join(stateDir, "sb"))
	for _, e := range ents {
		d := filepath.Join(stateDir, "sb", e.Name())
		b, err := os.ReadFile(filepath.Join(d, vm.PoolFile))
		if err != nil || strings.Contains(string(b), "claimed_by") {
			continue
		}
		out = append(out, loadRecord(t, d))
	}
	return out
}

// niceOf reads the nice value of pid's main thread (field 19 of /proc/PID/stat).
func niceOf(t *testing.T, pid int) int {
	t.Helper()
	st, err := procstat.Read(pid)
	if err != nil {
		t.Fatalf("nice of pid %d: %v", pid, err)
	}
	return st.Nice
}

// loadRecord reads the state record in dir.
func loadRecord(t *testing.T, dir string) *state.Record {
	t.Helper()
	rec, err := state.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// record2 finds the state record of sandbox id wherever its directory is (a claimed
// pool VM's is named after the pool member).
func record2(t *testing.T, stateDir, id string) *state.Record {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(stateDir, "sb"))
	for _, e := range ents {
		if rec, err := state.Load(filepath.Join(stateDir, "sb", e.Name())); err == nil && rec.SandboxID == id {
			return rec
		}
	}
	t.Fatalf("no state record of %s", id)
	return nil
}
