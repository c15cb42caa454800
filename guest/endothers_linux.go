package guest

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/internal/procstat"
)

// EndOtherProcesses kills every process of the guest but its init (this process,
// PID 1) and the kernel's threads, and waits until none of them runs any more (a
// zombie no longer runs; the next reaper collects it). A guest restored as a copy of
// another sandbox calls it between the old identity's run and the new one's: a
// program the old main process started, or one that left its group, would otherwise
// carry the source sandbox's environment and files into the copy. It reports how many
// processes were still running after wait (0 when all ended).
func EndOtherProcesses(wait time.Duration) (int, error) {
	if !IsPID1() {
		return 0, errors.New("guest: only the guest's init (PID 1) may end every other process")
	}
	// kill(-1) as PID 1: every process but the caller (the kernel skips init itself).
	if err := unix.Kill(-1, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		return 0, fmt.Errorf("guest: kill every other process: %w", err)
	}
	deadline := time.Now().Add(wait)
	for {
		left, err := runningOthers()
		if err != nil || left == 0 || time.Now().After(deadline) {
			return left, err
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// runningOthers counts the processes other than PID 1 that are neither kernel
// threads nor zombies.
func runningOthers() (int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == 1 {
			continue
		}
		st, err := procstat.Read(pid)
		if err != nil || st.State == 'Z' || st.State == 'X' || st.Flags&procstat.PFKthread != 0 {
			continue // gone meanwhile, no longer running, or a kernel thread
		}
		n++
	}
	return n, nil
}
