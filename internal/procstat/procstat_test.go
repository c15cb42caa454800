package procstat

import (
	"bytes"
	"os"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	line := "1234 (we ird) (name) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 3 4 20 -5 1 0 987654 1000 100 0"
	s, err := Parse([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if s.State != 'S' || s.PPID != 1 || s.Session != 1234 || s.Flags != 4194560 || s.StartTime != 987654 ||
		s.UTime != 1 || s.STime != 2 || s.CUTime != 3 || s.CSTime != 4 || s.Nice != -5 {
		t.Fatalf("parsed %+v", s)
	}
	for _, bad := range []string{"1 (x) S 1", "garbage", "1 (x) S 1 1 1 0 -1 notanumber 0 0 0 0 1 2 0 0 20 0 1 0 9 1 1 0"} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

func TestReadSelf(t *testing.T) {
	s, err := Read(os.Getpid())
	if err != nil || s.PPID != os.Getppid() || s.Flags&PFKthread != 0 {
		t.Fatalf("Read(self) = %+v, %v; want ppid %d and no kernel-thread flag", s, err, os.Getppid())
	}
	k, err := Read(2) // kthreadd
	if err == nil && k.Flags&PFKthread == 0 {
		t.Fatalf("pid 2 (kthreadd) without PF_KTHREAD: %+v", k)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("1234 (sleep) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100 0"))
	f.Add([]byte("1 ())) R"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = Parse(b)
	})
}

// TestRusageCPU: this process's CPU grows by at least what a busy loop spends; a
// child's CPU is counted once the child is waited for.
func TestRusageCPU(t *testing.T) {
	before := RusageCPU(syscall.RUSAGE_SELF)
	for end := time.Now().Add(50 * time.Millisecond); time.Now().Before(end); {
	}
	if got := RusageCPU(syscall.RUSAGE_SELF) - before; got < 20*time.Millisecond {
		t.Errorf("a 50 ms busy loop added %v of CPU", got)
	}
	kids := RusageCPU(syscall.RUSAGE_CHILDREN)
	if err := exec.Command("sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done").Run(); err != nil {
		t.Fatalf("a busy child: %v", err)
	}
	if RusageCPU(syscall.RUSAGE_CHILDREN) <= kids {
		t.Error("a waited-for busy child added no CPU to RUSAGE_CHILDREN")
	}
}

// TestAutogroupNice: this process's group reads as the nice its file shows where the
// file has one, as nothing where it is empty (the kernel writes nothing when the task
// group is a cgroup's, as on a CI runner in a container) or missing, and as nothing
// for a pid that does not exist.
func TestAutogroupNice(t *testing.T) {
	n, ok := AutogroupNice(os.Getpid())
	b, err := os.ReadFile(AutogroupPath(os.Getpid()))
	switch want, wantOK := parseAutogroup(b); {
	case err != nil && ok:
		t.Errorf("no %s (%v), yet AutogroupNice(self) = %d", AutogroupPath(os.Getpid()), err, n)
	case err == nil && (n != want || ok != wantOK):
		t.Errorf("AutogroupNice(self) = %d, %v; its file says %q", n, ok, b)
	case err == nil && len(bytes.TrimSpace(b)) > 0 && !ok:
		t.Errorf("AutogroupNice(self) read nothing from %q", b)
	}
	if _, ok := AutogroupNice(os.Getpid() + 1<<22); ok {
		t.Error("a pid that does not exist has a scheduling group")
	}
}

// TestParseAutogroup: the kernel's line gives its nice; an empty file (a task group
// that is not an autogroup) and anything else give nothing.
func TestParseAutogroup(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int
		ok   bool
	}{
		{"/autogroup-39592 nice 0\n", 0, true},
		{"/autogroup-7 nice -5\n", -5, true},
		{"/autogroup-7 nice 19", 19, true},
		{"", 0, false},
		{"\n", 0, false},
		{"/autogroup-7 nice", 0, false},
		{"/autogroup-7 nice x", 0, false},
		{"/autogroup-7 nice -21", 0, false},
		{"/autogroup-7 nicety 3", 0, false},
		{"autogroup nice 3", 0, false},
	} {
		if n, ok := parseAutogroup([]byte(c.in)); n != c.want || ok != c.ok {
			t.Errorf("parseAutogroup(%q) = %d, %v; want %d, %v", c.in, n, ok, c.want, c.ok)
		}
	}
}

func FuzzParseAutogroup(f *testing.F) {
	f.Add([]byte("/autogroup-1 nice -5\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, b []byte) {
		if n, ok := parseAutogroup(b); ok && (n < -20 || n > 19) {
			t.Errorf("parseAutogroup(%q) = %d, out of range", b, n)
		}
	})
}

// TestSessionMembers: this test's process is listed in its own session, and not once
// the start bound is after its start (a foreign session that reused the id).
func TestSessionMembers(t *testing.T) {
	self, err := Read(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(SessionMembers(self.Session, 0), os.Getpid()) {
		t.Fatalf("pid %d not among the members of its session %d", os.Getpid(), self.Session)
	}
	if slices.Contains(SessionMembers(self.Session, self.StartTime+1), os.Getpid()) {
		t.Fatalf("pid %d listed though it started before the bound", os.Getpid())
	}
	if got := SessionMembers(-1, 0); len(got) != 0 {
		t.Fatalf("members of no session: %v", got)
	}
}
