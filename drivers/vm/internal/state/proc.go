package state

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// ProcStat is what the driver needs from /proc/<pid>/stat.
type ProcStat struct {
	State     byte   // R, S, D, Z, ...
	PPID      int    // field 4
	Session   int    // field 6
	StartTime uint64 // field 22, clock ticks since boot
}

// ReadProcStat reads /proc/<pid>/stat.
func ReadProcStat(pid int) (*ProcStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	return ParseProcStat(b)
}

// ParseProcStat parses the content of /proc/<pid>/stat. The command name (field 2) may
// contain spaces and parentheses, so fields are counted after the last ')'.
func ParseProcStat(b []byte) (*ProcStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, errors.New("proc stat: no ')' after the command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); field n is f[n-3].
	if len(f) < 20 {
		return nil, fmt.Errorf("proc stat: %d fields after the command name, want at least 20", len(f))
	}
	if len(f[0]) != 1 {
		return nil, fmt.Errorf("proc stat: bad state %q", f[0])
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return nil, fmt.Errorf("proc stat: ppid: %w", err)
	}
	sid, err := strconv.Atoi(f[3])
	if err != nil {
		return nil, fmt.Errorf("proc stat: session: %w", err)
	}
	st, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return nil, fmt.Errorf("proc stat: starttime: %w", err)
	}
	return &ProcStat{State: f[0][0], PPID: ppid, Session: sid, StartTime: st}, nil
}

// ProcStartTime returns the start time of pid (0 and an error when it does not exist).
func ProcStartTime(pid int) (uint64, error) {
	s, err := ReadProcStat(pid)
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
	s, err := ReadProcStat(pid)
	if err != nil {
		return false
	}
	return s.StartTime == start && s.State != 'Z' && s.State != 'X'
}

// SessionMembers lists the live processes whose session id is sid and which started at
// or after minStart (to skip a foreign session that reused the id).
func SessionMembers(sid int, minStart uint64) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		s, err := ReadProcStat(pid)
		if err != nil || s.Session != sid || s.StartTime < minStart || s.State == 'Z' {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// Signal sends sig to pid if it is still the process that started at start.
func Signal(pid int, start uint64, sig syscall.Signal) bool {
	if !SameProcess(pid, start) {
		return false
	}
	return syscall.Kill(pid, sig) == nil
}
