//go:build !linux

package guest

import "os"

// RunPID1 only exists in a Linux guest; elsewhere it exits with status 1.
func RunPID1(opts InitOptions, run func() int) {
	os.Stderr.WriteString("guest: RunPID1 only works as PID 1 of a Linux guest\n")
	os.Exit(1)
}

func bootTimeNs() int64 { return 0 }
