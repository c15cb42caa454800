//go:build !linux

package guest

import (
	"errors"
	"os"
	"time"
)

// RunPID1 only exists in a Linux guest; elsewhere it exits with status 1.
func RunPID1(opts InitOptions, run func() int) {
	os.Stderr.WriteString("guest: RunPID1 only works as PID 1 of a Linux guest\n")
	os.Exit(1)
}

func bootTimeNs() int64 { return 0 }

// EndOtherProcesses only exists in a Linux guest.
func EndOtherProcesses(time.Duration) (int, error) {
	return 0, errors.New("guest: EndOtherProcesses only works as PID 1 of a Linux guest")
}
