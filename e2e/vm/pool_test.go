package vm_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/internal/procstat"
)

// poolStatus is the part of `openshell-driver-vm doctor --json` a pool test reads.
type poolStatus struct {
	Name         string  `json:"name"`
	Idle         int     `json:"idle"`
	Booting      int     `json:"booting"`
	IdleRSSBytes []int64 `json:"idle_rss_bytes"`
}

// startPoolRun is startVMRun with a warm pool of size VMs of the test image's shape
// (1 vCPU, 512 MiB, the driver's default disk) in the gateway config.
func startPoolRun(t *testing.T, pool string, size int) *vmRun {
	t.Helper()
	return startVMRunWith(t, func(image string) string {
		return fmt.Sprintf("\n[drivers.vm.pools.%s]\nsize = %d\nimage = %q\n", pool, size, image)
	})
}

// pools asks the driver binary's doctor about the warm pools in the gateway's state.
func (r *vmRun) pools() []poolStatus {
	r.t.Helper()
	cmd := exec.Command(filepath.Join(r.bin, "openshell-driver-vm"), "doctor", "--json", "--state-dir", filepath.Join(r.gwState, "vm-driver"))
	out, _ := cmd.Output() // exit 1 = something missing on the host; the JSON still says it
	var rep struct {
		Pools []poolStatus `json:"pools"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		r.t.Fatalf("driver doctor: %v: %s", err, out)
	}
	return rep.Pools
}

// waitIdle waits until pool has idle VMs.
func (r *vmRun) waitIdle(pool string, idle int, within time.Duration) poolStatus {
	r.t.Helper()
	deadline := time.Now().Add(within)
	var last poolStatus
	for time.Now().Before(deadline) {
		for _, p := range r.pools() {
			if p.Name == pool {
				last = p
				if p.Idle >= idle {
					return p
				}
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	r.dumpLogs()
	r.t.Fatalf("pool %s: not %d idle VMs within %v (last %+v)", pool, idle, within, last)
	return last
}

// idleRunners lists the runner pids of the pool's idle VMs on disk, sorted.
func (r *vmRun) idleRunners() []int {
	var out []int
	dirs, _ := filepath.Glob(filepath.Join(r.gwState, "vm-driver", "sb", "*", "pool.json"))
	for _, f := range dirs {
		b, _ := os.ReadFile(f)
		if strings.Contains(string(b), "claimed_by") {
			continue
		}
		var rec vmRecord
		if sb, err := os.ReadFile(filepath.Join(filepath.Dir(f), "state.json")); err == nil && json.Unmarshal(sb, &rec) == nil && alive(rec.RunnerPID) {
			out = append(out, rec.RunnerPID)
		}
	}
	slices.Sort(out)
	return out
}

// fromPool reads status.fromPool of sandbox name.
func (r *vmRun) fromPool(name string) string {
	r.t.Helper()
	out := r.cli("sandbox", "get", name, "-o", "json")
	var v struct {
		Status struct {
			FromPool string `json:"from_pool"`
			Phase    string `json:"phase"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		r.t.Fatalf("sandbox get %s: %v", name, err)
	}
	return v.Status.FromPool
}

// TestVMPoolIsolationAndKill9 runs a warm pool of three real guests (TCG here) behind
// a real gateway and supervisor:
//   - creates of the pool's shape are served from it (sandbox get says so) and are
//     READY through the CLI far sooner than a boot;
//   - a file, a process, an environment variable and random bytes of one pooled
//     sandbox are never seen in another, nor in one made from the refilled pool after
//     the first was deleted (boot ids differ: each VM is used once);
//   - the idle VMs' host memory is reported (driver doctor);
//   - gateway and driver killed with SIGKILL: the idle VMs are re-adopted (the same
//     runner processes), the claimed sandboxes are READY again, and a claim after the
//     restart works.
func TestVMPoolIsolationAndKill9(t *testing.T) {
	const pool = "e2e"
	r := startPoolRun(t, pool, 3)
	ps := r.waitIdle(pool, 3, 6*time.Minute)
	for i, b := range ps.IdleRSSBytes {
		t.Logf("idle pooled VM %d: host RSS %.1f MiB (runner + QEMU + vsock backend; guest 512 MiB, TCG)", i, float64(b)/(1<<20))
		if b < 32<<20 {
			t.Errorf("idle pooled VM %d: RSS %d bytes: not measured", i, b)
		}
	}

	// A pooled VM yields the CPU to other VMs until it is claimed: on a kernel with
	// autogroup scheduling (each runner's session a scheduling group of its own) that
	// takes the group's nice, not only its threads'.
	for _, pid := range r.idleRunners() {
		n, ok := procstat.AutogroupNice(pid)
		if !ok {
			t.Logf("idle pooled VM's runner %d: no scheduling group (a kernel without autogroups)", pid)
		} else if n != 10 {
			t.Errorf("idle pooled VM's runner %d: its scheduling group has nice %d, want 10", pid, n)
		} else {
			t.Logf("idle pooled VM's runner %d: its scheduling group has nice 10", pid)
		}
	}
	// The control plane (the gateway's session, its VM driver in it) ranks above its
	// VMs: the creates' steps go through it while VMs take the CPU. Raising a group
	// takes CAP_SYS_NICE, which root has.
	if n, ok := procstat.AutogroupNice(r.gatewayPID()); ok && os.Geteuid() == 0 && n != -5 {
		t.Errorf("the gateway's and VM driver's scheduling group has nice %d, want -5", n)
	} else if ok {
		t.Logf("the gateway's and VM driver's scheduling group has nice %d", n)
	}

	// What a sandbox sees: its boot id, 16 random bytes, and the rest (its /tmp, its
	// processes, its environment) in one text.
	type seen struct{ boot, rnd, rest string }
	look := func(name string) seen {
		// READY means the session is up; wait for the main process's file first.
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
			if out, err := r.run("sandbox", "exec", "-n", name, "--", "sh", "-c", "ls /tmp/file-*"); err == nil && strings.Contains(out, "file-") {
				break
			}
		}
		out := r.execIn(name, "sh", "-c",
			`cat /proc/sys/kernel/random/boot_id; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; echo; ls /tmp; echo; ps -o args 2>/dev/null || ps; echo; env`)
		parts := strings.SplitN(out, "\n", 3)
		if len(parts) < 3 {
			t.Fatalf("%s: output %q", name, out)
		}
		return seen{boot: parts[0], rnd: parts[1], rest: parts[2]}
	}
	// Each sandbox's main process writes a file named after its secret and then
	// sleeps for a number of seconds only it uses (its process marker).
	createdAt := map[string]time.Time{}
	create := func(name, secret string, marker int) time.Duration {
		t0 := time.Now()
		createdAt[name] = t0
		r.cli("sandbox", "create", "--name", name, "--from", r.image, "--timeout", cliTimeout.String(), "--env", "POOL_SECRET="+secret,
			"--", "sh", "-c", "echo "+secret+" > /tmp/file-"+secret+"; exec sleep "+strconv.Itoa(marker))
		return time.Since(t0)
	}

	a, b := "e2e-pool-a", "e2e-pool-b"
	tookA := create(a, "alpha1", 7000001)
	tookB := create(b, "bravo2", 7000002)
	t.Logf("create → READY through the CLI from the pool: %v, %v", tookA, tookB)
	r.checkGuestClock(a)
	for _, n := range []string{a, b} {
		if fp := r.fromPool(n); fp != pool {
			t.Errorf("%s: status.from_pool %q, want %q", n, fp, pool)
		}
		// A claimed create's timeline: the pool's boot is not this create's wait.
		_, steps := r.createTimeline(n)
		var phases []string
		for _, f := range strings.Fields(steps) {
			phases = append(phases, f[:strings.IndexByte(f, '=')])
		}
		if got := strings.Join(phases, " "); got != "received driver claim bootstrap ready" {
			t.Errorf("%s: create timeline %q, want received driver claim bootstrap ready", n, steps)
		}
	}
	for _, n := range []string{a, b} {
		if _, rec, ok := r.sandboxDir(n); !ok {
			t.Errorf("%s: no VM record", n)
		} else if g, ok := procstat.AutogroupNice(rec.RunnerPID); ok && g != 0 {
			t.Errorf("%s: the claimed VM's scheduling group has nice %d, want 0", n, g)
		}
	}
	sa, sb := look(a), look(b)
	// A pooled VM's warm-up starts the confinement helpers its first programs run on
	// (spares) before any claim: the main process is such a process, exec'd into the
	// command at the claim, so it is older than its sandbox. Its age is read in the
	// guest (uptime minus its start time, in USER_HZ ticks of 1/100 s); the pattern is
	// assembled so that no process searching for it matches it, and a process that
	// ends during the search is passed over in silence (the shell reports a failed
	// redirection on the stderr in force when it is made, hence 2>/dev/null first).
	mainAge := func(name string, marker int) time.Duration {
		out := r.execIn(name, "sh", "-c", `m=`+strconv.Itoa(marker/10)+`; m=${m}`+strconv.Itoa(marker%10)+`
for p in /proc/[0-9]*; do case "$(tr '\0' ' ' 2>/dev/null <$p/cmdline)" in "sleep $m "*)
echo $(cut -d' ' -f1 /proc/uptime) $(cut -d' ' -f22 $p/stat);; esac; done`)
		var up float64
		var start int64
		if _, err := fmt.Sscan(out, &up, &start); err != nil {
			t.Fatalf("%s: main process age: %q: %v", name, out, err)
		}
		return time.Duration(up*float64(time.Second)) - time.Duration(start)*procstat.ClockTick
	}
	for n, marker := range map[string]int{a: 7000001, b: 7000002} {
		age, since := mainAge(n, marker), time.Since(createdAt[n])
		t.Logf("%s: main process age %v, sandbox created %v ago", n, age.Round(time.Millisecond), since.Round(time.Millisecond))
		if age <= since {
			t.Errorf("%s: the main process (%v old) was started after the create (%v ago): it did not run on a spare the pooled VM started ahead", n, age, since)
		}
	}
	if !strings.Contains(sa.rest, "file-alpha1") || !strings.Contains(sa.rest, "POOL_SECRET=alpha1") || !strings.Contains(sa.rest, "7000001") {
		t.Fatalf("sandbox a does not see its own file, variable and process: %q", sa.rest)
	}
	if !strings.Contains(sb.rest, "file-bravo2") || !strings.Contains(sb.rest, "POOL_SECRET=bravo2") || !strings.Contains(sb.rest, "7000002") {
		t.Fatalf("sandbox b does not see its own file, variable and process: %q", sb.rest)
	}
	for _, leak := range []string{"alpha1", "7000001"} {
		if strings.Contains(sb.rest, leak) {
			t.Errorf("sandbox b sees %q of sandbox a:\n%s", leak, sb.rest)
		}
	}
	if strings.Contains(sa.rest, "bravo2") || strings.Contains(sa.rest, "7000002") {
		t.Errorf("sandbox a sees sandbox b's secret:\n%s", sa.rest)
	}
	if sa.boot == "" || sa.boot == sb.boot {
		t.Errorf("two pooled sandboxes share a boot: %q / %q", sa.boot, sb.boot)
	}
	if len(sa.rnd) != 32 || sa.rnd == sb.rnd {
		t.Errorf("random bytes of a %q and b %q", sa.rnd, sb.rnd)
	}
	// Each claimed sandbox's CA bundle, drafted by its VM's warm-up, is finished with
	// its own CA (the last certificate), and no draft is left beside it.
	sandboxCA := func(name string) string {
		out := r.execIn(name, "sh", "-c", `ls -a /etc/openshell; echo ---; cat /etc/openshell/ca-bundle.pem`)
		listing, pem, _ := strings.Cut(out, "---")
		if strings.Contains(listing, "draft") {
			t.Errorf("%s: a CA bundle draft is left in /etc/openshell:\n%s", name, listing)
		}
		pem = strings.TrimSpace(pem)
		i := strings.LastIndex(pem, "-----BEGIN CERTIFICATE-----")
		if i < 0 || !strings.HasSuffix(pem, "-----END CERTIFICATE-----") {
			t.Fatalf("%s: the CA bundle does not end with a certificate:\n%s", name, pem)
		}
		return pem[i:]
	}
	if caA, caB := sandboxCA(a), sandboxCA(b); caA == caB {
		t.Errorf("two pooled sandboxes trust the same sandbox CA")
	}

	// Nothing of a claimed VM returns to the pool: delete a; the next claim is a VM
	// none of a or b ran in.
	r.deleteAndWaitGone(a, 2*time.Minute)
	r.waitIdle(pool, 3, 6*time.Minute)
	c := "e2e-pool-c"
	tookC := create(c, "charlie3", 7000003)
	sc := look(c)
	if r.fromPool(c) != pool {
		t.Errorf("%s was not served from the pool", c)
	}
	if sc.boot == sa.boot || sc.boot == sb.boot || sc.rnd == sa.rnd || sc.rnd == sb.rnd {
		t.Errorf("sandbox c shares a boot or random stream with a or b: %+v", sc)
	}
	for _, leak := range []string{"alpha1", "bravo2", "7000001", "7000002"} {
		if strings.Contains(sc.rest, leak) {
			t.Errorf("sandbox c sees %q of an earlier sandbox:\n%s", leak, sc.rest)
		}
	}
	t.Logf("create → READY from the pool after a delete: %v", tookC)

	// kill -9 the gateway and its driver with a full pool of three.
	r.waitIdle(pool, 3, 6*time.Minute)
	before := r.idleRunners()
	if len(before) != 3 {
		t.Fatalf("idle pool runners %v, want 3", before)
	}
	r.kill9GatewayAndDriver()
	r.startGateway()
	r.waitIdle(pool, 3, time.Minute)
	if after := r.idleRunners(); !slices.Equal(before, after) {
		t.Errorf("idle pool runners before the kill %v, after the restart %v: not re-adopted", before, after)
	}
	for _, n := range []string{b, c} {
		r.waitPhaseOf(n, "READY", 2*time.Minute)
		if r.fromPool(n) != pool {
			t.Errorf("%s: fromPool lost across the restart", n)
		}
	}
	d := "e2e-pool-d"
	tookD := create(d, "delta4", 7000004)
	if r.fromPool(d) != pool {
		t.Errorf("%s (after the restart) was not served from the pool", d)
	}
	// READY means the session is up; the main process may not have written yet, or
	// may have made the file and not yet written to it (an exec then reads it empty).
	var got, lastErr string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		out, err := r.run("sandbox", "exec", "-n", d, "--", "cat", "/tmp/file-delta4")
		if err != nil {
			lastErr = fmt.Sprintf("%v: %s", err, out)
			continue
		}
		if got = strings.TrimSpace(out); got == "delta4" {
			break
		}
		t.Logf("%s: its file reads %q so far", d, got)
	}
	if got != "delta4" {
		logs, _ := r.run("sandbox", "logs", d)
		t.Errorf("%s: its own file reads %q (last exec: %s); its logs:\n%s", d, got, lastErr, logs)
	}
	t.Logf("create → READY from the pool after gateway kill -9: %v", tookD)
	for _, n := range []string{b, c, d} {
		r.deleteAndWaitGone(n, 2*time.Minute)
	}
}
