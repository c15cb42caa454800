package guest

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/internal/procstat"
	"github.com/openshell/openshell/internal/testenv"
)

func TestEndOtherProcessesRefusedOutsideInit(t *testing.T) {
	if _, err := EndOtherProcesses(time.Second); err == nil || !strings.Contains(err.Error(), "PID 1") {
		t.Fatalf("EndOtherProcesses from pid %d: %v, want a refusal naming PID 1", os.Getpid(), err)
	}
}

// TestEndOtherProcesses runs this test binary as PID 1 of a new PID namespace (the
// guest's init), which starts a process group, a process that ignores SIGTERM and
// left its group, and an orphan; EndOtherProcesses must leave none of them running.
func TestEndOtherProcesses(t *testing.T) {
	if os.Getenv("GUEST_END_OTHERS_CHILD") == "1" {
		endOthersAsInit()
		return
	}
	testenv.RequireRoot(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestEndOtherProcesses$", "-test.v")
	cmd.Env = append(os.Environ(), "GUEST_END_OTHERS_CHILD=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "END-OTHERS OK") {
		t.Fatalf("init in a new PID namespace: %v\n%s", err, out)
	}
}

// endOthersAsInit is the namespace's init: it mounts its own /proc, starts what a
// main process might leave behind, ends it all and prints the outcome.
func endOthersAsInit() {
	fail := func(f string, a ...any) { fmt.Printf("FAIL: "+f+"\n", a...); os.Exit(1) }
	if os.Getpid() != 1 {
		fail("pid %d, want 1", os.Getpid())
	}
	if err := unix.Mount("", "/", "", unix.MS_PRIVATE|unix.MS_REC, ""); err != nil {
		fail("make / private: %v", err)
	}
	if err := unix.Mount("proc", "/proc", "proc", 0, ""); err != nil {
		fail("mount /proc: %v", err)
	}
	starts := []*exec.Cmd{
		exec.Command("sh", "-c", "sleep 300 & sleep 300 & wait"),
		exec.Command("sh", "-c", "trap '' TERM; exec sleep 300"),
		exec.Command("sh", "-c", "setsid sleep 300 & exit 0"), // an orphan, reparented to init
	}
	starts[1].SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	for _, c := range starts {
		if err := c.Start(); err != nil {
			fail("start %v: %v", c.Args, err)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		n, _ := runningOthers()
		if n >= 5 { // two shells and four sleeps, less the orphan's exited shell
			break
		}
		if time.Now().After(deadline) {
			fail("only %d processes running after 10 s", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	before, _ := runningOthers()
	left, err := EndOtherProcesses(5 * time.Second)
	if err != nil || left != 0 {
		fail("EndOtherProcesses: %d left, %v", left, err)
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid != 1 {
			if st, err := procstat.Read(pid); err == nil && st.State != 'Z' {
				fail("pid %d still running: %+v", pid, st)
			}
		}
	}
	fmt.Printf("END-OTHERS OK: %d processes ended\n", before)
}
