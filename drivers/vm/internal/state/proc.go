package state

import (
	"syscall"

	"github.com/openshell/openshell/internal/procstat"
)

// ProcStartTime returns the start time of pid (0 and an error when it does not exist).
func ProcStartTime(pid int) (uint64, error) {
	s, err := procstat.Read(pid)
	if err != nil {
		return 0, err
	}
	return s.StartTime, nil
}

// SameProcess reports whether pid is alive (not a zombie) and still the process that
// had start time start: a recycled pid has another start time.
func SameProcess(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	s, err := procstat.Read(pid)
	if err != nil {
		return false
	}
	return s.StartTime == start && s.State != 'Z' && s.State != 'X'
}

// Signal sends sig to pid if it is still the process that started at start.
func Signal(pid int, start uint64, sig syscall.Signal) bool {
	if !SameProcess(pid, start) {
		return false
	}
	return syscall.Kill(pid, sig) == nil
}
