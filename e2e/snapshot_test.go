package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// snapshotJSON is the part of `-o json` output of the snapshot commands the tests read.
type snapshotJSON struct {
	Name              string `json:"name"`
	SourceSandboxName string `json:"source_sandbox_name"`
	Bytes             string `json:"bytes"` // int64 in protojson is a string
	PausedMs          string `json:"paused_ms"`
	MemoryMib         int    `json:"memory_mib"`
}

func listSnapshots(t *testing.T, h *harness) []snapshotJSON {
	t.Helper()
	r := h.mustRun(t, "snapshot", "list", "-o", "json")
	var l struct {
		Snapshots []snapshotJSON `json:"snapshots"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &l); err != nil {
		t.Fatalf("snapshot list -o json: %v\n%s", err, r.stdout)
	}
	return l.Snapshots
}

// snapshotDirs lists the VM driver's snapshot directories of h's gateway.
func snapshotDirs(h *harness) []string {
	d, _ := filepath.Glob(filepath.Join(h.home, "s", "openshell", "*", "vm-driver", "snapshots", "*"))
	return d
}

// wantFail runs the CLI expecting a failure whose output says each of says.
func wantFail(t *testing.T, h *harness, says []string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	r := h.run(ctx, args...)
	if r.err == nil {
		t.Fatalf("openshell %s succeeded; want an error\n%s", strings.Join(args, " "), r.stdout)
	}
	for _, s := range says {
		if !strings.Contains(r.stderr, s) {
			t.Fatalf("openshell %s: error %q does not say %q", strings.Join(args, " "), strings.TrimSpace(r.stderr), s)
		}
	}
}

// TestVMSnapshot (E2E_DRIVER=vm): through the CLI, a running sandbox whose main
// process counts into a file is snapshotted (-o json: name, size, pause); it runs on
// (the counter goes on without a gap, exec works); the snapshot is listed, survives a
// gateway kill -9, and delete frees its files. Bad input is refused clearly: an
// unknown sandbox, a taken name, a bad name, a stopped sandbox, an unknown snapshot.
func TestVMSnapshot(t *testing.T) {
	if driver() != "vm" {
		t.Skip("VM driver only (E2E_DRIVER=vm)")
	}
	h := newHarness(t)
	useSuspendableVMs(t, h)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, d := range snapshotDirs(h) {
			h.run(ctx, "snapshot", "delete", filepath.Base(d))
		}
	})
	box := uniqueName("snap")
	h.create(box, "sh", "-c", "i=0; while :; do i=$((i+1)); echo $i >> /sandbox/counter; sleep 0.2; done")
	for deadline := time.Now().Add(60 * time.Second); ; {
		r := h.run(t.Context(), "sandbox", "exec", "-n", box, "--", "cat", "/sandbox/counter")
		if r.err == nil && len(strings.Fields(r.stdout)) >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the main process wrote no counter within 60 s: %v %s %s", r.err, r.stdout, r.stderr)
		}
		time.Sleep(500 * time.Millisecond)
	}
	before := counterLines(t, h, box)

	ts := time.Now()
	r := h.mustRun(t, "sandbox", "snapshot", box, "--name", "base", "-o", "json")
	took := time.Since(ts)
	var sn snapshotJSON
	if err := json.Unmarshal([]byte(r.stdout), &sn); err != nil || sn.Name != "base" || sn.SourceSandboxName != box || sn.Bytes == "" || sn.Bytes == "0" {
		t.Fatalf("sandbox snapshot -o json: %+v, %v\n%s", sn, err, r.stdout)
	}
	t.Logf("snapshot through the CLI, until the sandbox is READY again, took %v (sandbox paused %s ms, %s bytes on disk)", took.Round(time.Millisecond), sn.PausedMs, sn.Bytes)
	if g := h.mustRun(t, "sandbox", "get", box); !strings.Contains(g.stdout, "READY") {
		t.Fatalf("sandbox snapshot returned before the source was READY again:\n%s", g.stdout)
	}

	// The source runs on: its main process is the same one, still counting.
	time.Sleep(time.Second)
	after := counterLines(t, h, box)
	if after <= before {
		t.Fatalf("counter %d after the snapshot, %d before: the main process stopped", after, before)
	}

	// Bad input.
	wantFail(t, h, []string{"no-such-box"}, "sandbox", "snapshot", "no-such-box", "--name", "x")
	wantFail(t, h, []string{"exists already"}, "sandbox", "snapshot", box, "--name", "base")
	wantFail(t, h, []string{"lower-case"}, "sandbox", "snapshot", box, "--name", "Bad_Name")
	wantFail(t, h, []string{"no such snapshot", "snapshot list"}, "snapshot", "delete", "no-such-snap")

	if l := listSnapshots(t, h); len(l) != 1 || l[0].Name != "base" || l[0].SourceSandboxName != box {
		t.Fatalf("snapshot list: %+v", l)
	}
	if tbl := h.mustRun(t, "snapshot", "list"); !strings.Contains(tbl.stdout, "base") || !strings.Contains(tbl.stdout, box) {
		t.Fatalf("snapshot list table:\n%s", tbl.stdout)
	}

	// Snapshots are files: a gateway killed with -9 and started again lists it.
	if err := killPID(h.gatewayPID()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	h.startGateway()
	if l := listSnapshots(t, h); len(l) != 1 || l[0].Name != "base" {
		t.Fatalf("snapshot list after a gateway kill -9: %+v", l)
	}

	h.mustRun(t, "sandbox", "stop", box)
	wantFail(t, h, []string{"stopped", "start it"}, "sandbox", "snapshot", box, "--name", "later")

	dirs := snapshotDirs(h)
	if len(dirs) != 1 {
		t.Fatalf("snapshot dirs %v", dirs)
	}
	d := h.mustRun(t, "snapshot", "delete", "base")
	if !strings.Contains(d.stdout, "freed") {
		t.Fatalf("snapshot delete said %q", d.stdout)
	}
	if _, err := os.Stat(dirs[0]); !os.IsNotExist(err) {
		t.Fatalf("snapshot files after delete: %v", err)
	}
	if l := listSnapshots(t, h); len(l) != 0 {
		t.Fatalf("snapshot list after delete: %+v", l)
	}
}

// execOut runs a command in a sandbox and returns its trimmed stdout.
func execOut(t *testing.T, h *harness, box string, argv ...string) string {
	t.Helper()
	return strings.TrimSpace(h.mustRun(t, append([]string{"sandbox", "exec", "-n", box, "--"}, argv...)...).stdout)
}

// sandboxID reads a sandbox's id from `sandbox get -o json`.
func sandboxID(t *testing.T, h *harness, box string) string {
	t.Helper()
	var sb struct {
		Metadata struct {
			ID string `json:"id"`
		} `json:"metadata"`
	}
	r := h.mustRun(t, "sandbox", "get", box, "-o", "json")
	if err := json.Unmarshal([]byte(r.stdout), &sb); err != nil || sb.Metadata.ID == "" {
		t.Fatalf("sandbox get %s -o json: %v\n%s", box, err, r.stdout)
	}
	return sb.Metadata.ID
}

// TestVMSnapshotCopies (E2E_DRIVER=vm): two sandboxes created from one snapshot of a
// running sandbox are each their own: their own sandbox id and session (each READY on
// its own token), hostname, random stream (reads of /dev/urandom differ between the
// copies and from the source) and files (a file written in one is absent in the other
// and in the source, while the source's file from before the snapshot is in both);
// their clocks are the host's. They were restored, not booted (their uptime goes on
// from the source's), and what a restore cannot change is asserted: the kernel's
// boot_id, read in the source before the snapshot, is the source's in both. No
// process of the source runs on in a copy: a program its main process left in the
// background, and the variable in its environment, are seen in the source only. The
// source runs on unaffected. It times create
// --from-snapshot → READY against a cold create (BENCH line for scripts/bench.sh
// snapshot; target ≤ 0.3×).
func TestVMSnapshotCopies(t *testing.T) {
	if driver() != "vm" {
		t.Skip("VM driver only (E2E_DRIVER=vm)")
	}
	h := newHarness(t)
	useSuspendableVMs(t, h)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		h.run(ctx, "sandbox", "delete", "--all")
		for _, d := range snapshotDirs(h) {
			h.run(ctx, "snapshot", "delete", filepath.Base(d))
		}
	})
	warm := uniqueName("warm")
	h.create(warm, "true")
	h.mustRun(t, "sandbox", "delete", warm)
	src := uniqueName("src")
	t0 := time.Now()
	// The main process leaves a program of its own running in the background, with a
	// variable of the source's in its environment: the copies must run neither.
	h.create(src, "sh", "-c", "export SOURCE_ONLY=src-secret-7f3a; sleep 86399 & i=0; while :; do i=$((i+1)); echo $i >> /sandbox/counter; sleep 0.2; done")
	cold := time.Since(t0)
	execOut(t, h, src, "sh", "-c", "echo from-source > /sandbox/before-snapshot")
	// The kernel makes its boot_id at the first read: read it before the snapshot, so
	// the copies hold it in their restored memory.
	srcBoot := execOut(t, h, src, "cat", "/proc/sys/kernel/random/boot_id")
	srcUp := uptime(t, h, src)
	h.mustRun(t, "sandbox", "snapshot", src, "--name", "base")

	var copies []string
	var took []time.Duration
	for i := range 2 {
		c := uniqueName(fmt.Sprintf("copy%d", i))
		tc := time.Now()
		h.mustRun(t, "sandbox", "create", "--name", c, "--from-snapshot", "base", "--timeout", "180s", "--detach", "--", "sh", "-c", "while :; do sleep 1; done")
		took = append(took, time.Since(tc))
		copies = append(copies, c)
		// The copy's clock was stepped to the host's as it took its identity (after tc):
		// read at once, since a TCG guest's clock can run slow on a busy host.
		if s, err := strconv.ParseInt(execOut(t, h, c, "date", "+%s"), 10, 64); err != nil || s < tc.Unix()-1 || time.Since(time.Unix(s, 0)).Abs() > 10*time.Second {
			t.Errorf("copy %s: clock %d vs host %d (create began %d): not stepped to the host's time (%v)", c, s, time.Now().Unix(), tc.Unix(), err)
		}
	}
	t.Logf("cold create→READY %v; create --from-snapshot→READY %v, %v", cold.Round(time.Millisecond), took[0].Round(time.Millisecond), took[1].Round(time.Millisecond))
	t.Logf("first copy (its create timeline):\n%s", h.mustRun(t, "sandbox", "get", copies[0]).stdout)
	logRestoreTimeline(t, h, sandboxID(t, h, copies[0]))
	fmt.Printf("BENCH snapshot from_snapshot_ms=%d cold_ms=%d ratio=%.3f\n", took[0].Milliseconds(), cold.Milliseconds(), took[0].Seconds()/cold.Seconds())

	// What the source's main process started is seen by the source's agent, and by
	// no copy's: no process of the source runs on in a copy, and none carries its
	// environment.
	for _, b := range append([]string{src}, copies...) {
		got := execOut(t, h, b, "sh", "-c", sourceLeftovers)
		if want := b == src; strings.Contains(got, "sleep 86399") != want || strings.Contains(got, "src-secret-7f3a") != want {
			t.Fatalf("%s: processes with the source's background program or environment (want them only in the source): %q", b, got)
		}
	}

	ids := map[string]bool{sandboxID(t, h, src): true}
	rnd := map[string]string{}
	bootIDs := map[string]string{}
	for _, b := range append([]string{src}, copies...) {
		ids[sandboxID(t, h, b)] = true
		r := execOut(t, h, b, "od", "-An", "-tx1", "-N32", "/dev/urandom")
		if prev, ok := rnd[r]; ok {
			t.Fatalf("sandboxes %s and %s read the same 32 bytes from /dev/urandom: %s", prev, b, r)
		}
		rnd[r] = b
		bootIDs[b] = execOut(t, h, b, "cat", "/proc/sys/kernel/random/boot_id")
		if b == src {
			continue
		}
		if hn := execOut(t, h, b, "cat", "/proc/sys/kernel/hostname"); hn != b {
			t.Errorf("copy %s has hostname %q", b, hn)
		}
		// Restored, not booted: the guest's clock of uptime goes on from the source's.
		if up := uptime(t, h, b); up < srcUp {
			t.Fatalf("copy %s: uptime %.1f s, less than the source's %.1f s before the snapshot: it booted instead of being restored", b, up, srcUp)
		}
		if got := execOut(t, h, b, "cat", "/sandbox/before-snapshot"); got != "from-source" {
			t.Fatalf("copy %s: the source's file from before the snapshot reads %q", b, got)
		}
	}
	if len(ids) != 3 {
		t.Fatalf("sandbox ids %v: want three different", ids)
	}
	// boot_id cannot change without a reboot: the copies keep the source's.
	if bootIDs[src] != srcBoot || bootIDs[copies[0]] != srcBoot || bootIDs[copies[1]] != srcBoot {
		t.Fatalf("boot_id: source %s (before the snapshot %s), copies %s %s: want the source's in all (restored memory)", bootIDs[src], srcBoot, bootIDs[copies[0]], bootIDs[copies[1]])
	}

	// Each sees only its own writes after the restore.
	execOut(t, h, copies[0], "sh", "-c", "echo mine > /sandbox/only-in-copy0")
	for _, b := range []string{src, copies[1]} {
		if out := execOut(t, h, b, "sh", "-c", "test -e /sandbox/only-in-copy0 && echo present || echo absent"); out != "absent" {
			t.Fatalf("%s sees the file written in %s: %s", b, copies[0], out)
		}
	}
	// The source runs on unaffected.
	before := counterLines(t, h, src)
	time.Sleep(time.Second)
	if after := counterLines(t, h, src); after <= before {
		t.Fatalf("source counter stuck at %d after the copies were made", after)
	}
}

// sourceLeftovers prints, as the agent reads them, every process's command line and
// the environment variables of those whose environment it may read.
const sourceLeftovers = `for p in /proc/[0-9]*; do tr '\0' ' ' < $p/cmdline 2>/dev/null; tr '\0' '\n' < $p/environ 2>/dev/null | grep SOURCE_ONLY; echo; done`

// uptime reads a sandbox's /proc/uptime (seconds).
func uptime(t *testing.T, h *harness, box string) float64 {
	t.Helper()
	f := strings.Fields(execOut(t, h, box, "cat", "/proc/uptime"))
	if len(f) == 0 {
		t.Fatalf("%s: empty /proc/uptime", box)
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		t.Fatalf("%s: /proc/uptime %q: %v", box, f, err)
	}
	return v
}

// logRestoreTimeline logs, for the copy with id, the gateway's lines about it and its
// runner's and its guest's lines from the restore on (host and guest clocks agree once
// the guest took the host's time): where the time between the restore and READY goes.
func logRestoreTimeline(t *testing.T, h *harness, id string) {
	t.Helper()
	gwLogs, _ := filepath.Glob(filepath.Join(h.home, "s", "openshell", "*", "gateway.log"))
	for _, f := range gwLogs {
		logMatching(t, "copy "+id+": gateway.log", f, id, 40)
	}
	dirs, _ := filepath.Glob(filepath.Join(h.home, "s", "openshell", "*", "vm-driver", "sb", "*"))
	for _, d := range dirs {
		st, err := os.ReadFile(filepath.Join(d, "state.json"))
		if err != nil || !strings.Contains(string(st), id) {
			continue
		}
		for _, f := range []string{"runner.log", "console.log"} {
			logMatching(t, "copy "+id+": "+f, filepath.Join(d, f), "time=", 60)
		}
		return
	}
	t.Logf("copy %s: no state directory found", id)
}

// logMatching logs, under label, the first max lines of the file at path that hold sub.
func logMatching(t *testing.T, label, path, sub string, max int) {
	t.Helper()
	b, _ := os.ReadFile(path)
	var keep []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, sub) && len(keep) < max {
			keep = append(keep, l)
		}
	}
	t.Logf("%s:\n%s", label, strings.Join(keep, "\n"))
}
