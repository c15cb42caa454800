package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
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
