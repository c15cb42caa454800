package state

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRecordRoundTrip(t *testing.T) {
	dir := t.TempDir()
	r := &Record{SandboxID: "sb-1", SandboxName: "one", CreatedAt: time.Now().UTC().Truncate(time.Second), Paths: PathsFor(dir)}
	if err := Create(r); err != nil {
		t.Fatal(err)
	}
	got, err := Update(dir, func(r *Record) error { r.RunnerPID = 42; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if got.RunnerPID != 42 {
		t.Fatalf("runner pid %d", got.RunnerPID)
	}
	again, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if again.RunnerPID != 42 || again.SandboxName != "one" || !again.CreatedAt.Equal(r.CreatedAt) {
		t.Fatalf("reloaded %+v", again)
	}
	st, _ := os.Stat(filepath.Join(dir, RecordFile))
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("state.json mode %v, want 0600", st.Mode().Perm())
	}
	// No temp files left behind.
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp") {
			t.Fatalf("temp file left: %s", e.Name())
		}
	}
}

func TestTombstone(t *testing.T) {
	dir := t.TempDir()
	if ts, err := ReadTombstone(dir); ts != nil || err != nil {
		t.Fatalf("empty dir tombstone %v %v", ts, err)
	}
	if err := WriteTombstone(dir, &Tombstone{Reason: "VMExited", Message: "qemu killed"}); err != nil {
		t.Fatal(err)
	}
	ts, err := ReadTombstone(dir)
	if err != nil || ts == nil || ts.Reason != "VMExited" {
		t.Fatalf("tombstone %v %v", ts, err)
	}
	if err := ClearTombstone(dir); err != nil {
		t.Fatal(err)
	}
	if ts, _ := ReadTombstone(dir); ts != nil {
		t.Fatal("tombstone not cleared")
	}
}

func TestValidID(t *testing.T) {
	for _, id := range []string{"", ".", "..", "../x", "a/b", strings.Repeat("a", 129), "a b"} {
		if ValidID(id) == nil {
			t.Errorf("ValidID(%q) accepted", id)
		}
	}
	for _, id := range []string{"a", "3f1c2b8e-1234-4abc-9def-0123456789ab", "sb_1.x", "-x", strings.Repeat("a", 128)} {
		if err := ValidID(id); err != nil {
			t.Errorf("ValidID(%q): %v", id, err)
		}
		if d := DirName(id); len(d) != MaxDirName || d == "" || d[0] == '.' || strings.ContainsAny(d, "/") {
			t.Errorf("DirName(%q) = %q", id, d)
		}
	}
	if first, again := DirName("abc"), DirName("abc"); first != again || DirName(strings.Repeat("a", 100)) == DirName(strings.Repeat("a", 101)) {
		t.Error("DirName: stable, and distinct ids get distinct names")
	}
}

func TestTail(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log")
	os.WriteFile(p, []byte("line1\nline2\nline3\n"), 0o600)
	if got := Tail(p, 9); got != "line3\n" {
		t.Fatalf("Tail = %q", got)
	}
	if got := Tail(p, 100); got != "line1\nline2\nline3\n" {
		t.Fatalf("Tail = %q", got)
	}
	if got := Tail(filepath.Join(t.TempDir(), "none"), 10); got != "" {
		t.Fatalf("Tail of missing = %q", got)
	}
}

func TestProcStatRealProcess(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	st, err := ProcStartTime(pid)
	if err != nil || st == 0 {
		t.Fatalf("start time %d %v", st, err)
	}
	if !SameProcess(pid, st) {
		t.Fatal("SameProcess false for live child")
	}
	if SameProcess(pid, st+1) {
		t.Fatal("SameProcess true with a wrong start time")
	}
	cmd.Process.Kill()
	cmd.Wait()
	if SameProcess(pid, st) {
		t.Fatal("SameProcess true after exit")
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"version":1,"sandbox_id":"a","paths":{"dir":"/x"}}`))
	f.Add([]byte(`{"version":1,"sandbox_id":"../a"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Decode(b)
		if err == nil && ValidID(r.SandboxID) != nil {
			t.Fatalf("Decode accepted unsafe id %q", r.SandboxID)
		}
	})
}

// TestReadsLegacyVMMPID: records written before the VMM was backend-neutral name the
// VMM's pid qemu_pid; a driver of this version must still re-adopt those VMs.
func TestReadsLegacyVMMPID(t *testing.T) {
	var r Record
	if err := json.Unmarshal([]byte(`{"version":1,"sandbox_id":"a","qemu_pid":4242,"qemu_start":77,"runner_pid":5}`), &r); err != nil {
		t.Fatal(err)
	}
	if r.VMMPID != 4242 || r.VMMStart != 77 || r.RunnerPID != 5 || r.SandboxID != "a" {
		t.Fatalf("legacy record read as %+v", r)
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"vmm_pid":4242`) || strings.Contains(string(b), "qemu") {
		t.Fatalf("record written as %s", b)
	}
	var again Record
	if err := json.Unmarshal(b, &again); err != nil || again.VMMPID != 4242 || again.VMMStart != 77 {
		t.Fatalf("round trip: %+v %v", again, err)
	}
}

// FuzzRecordJSON: state.json of any version (or a corrupt one) decodes or errors,
// never panics; the current vmm_pid wins over a legacy qemu_pid.
func FuzzRecordJSON(f *testing.F) {
	f.Add([]byte(`{"version":1,"sandbox_id":"a","qemu_pid":4242,"qemu_start":77}`))
	f.Add([]byte(`{"version":1,"sandbox_id":"a","vmm_pid":1,"qemu_pid":2}`))
	f.Add([]byte(`{"paths":{"dir":"/x"},"error":{"reason":"BootFailed"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Record
		if err := json.Unmarshal(b, &r); err != nil {
			return
		}
		var raw struct {
			VMM *int `json:"vmm_pid"`
		}
		if json.Unmarshal(b, &raw) == nil && raw.VMM != nil && *raw.VMM != 0 && r.VMMPID != *raw.VMM {
			t.Fatalf("vmm_pid %d decoded as %d", *raw.VMM, r.VMMPID)
		}
	})
}
