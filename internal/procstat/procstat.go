// Package procstat reads a Linux process's /proc/<pid>/stat: the one parser of its
// fields for the driver, the guest init, the egress proxy, the CLI and the tests.
package procstat

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Stat is the part of /proc/<pid>/stat the project reads.
type Stat struct {
	State   byte   // field 3: R, S, D, Z, ...
	PPID    int    // field 4
	Session int    // field 6
	Flags   uint64 // field 9: the kernel's PF_* flags
	// Fields 14-17: CPU time in clock ticks (USER_HZ), the process's own in user and
	// kernel mode, then that of its waited-for children.
	UTime, STime, CUTime, CSTime uint64
	Nice                         int    // field 19
	StartTime                    uint64 // field 22, clock ticks since boot
}

// ClockTick is USER_HZ, the unit of the CPU times (100 on every Linux ABI).
const ClockTick = 10 * time.Millisecond

// AutogroupNice reads the nice of the scheduling group of pid's session
// (/proc/PID/autogroup: "/autogroup-N nice X"); false when the kernel has no
// autogroups, pid is gone, or pid's task group is a cgroup's rather than its
// session's autogroup (the file is then empty and the group's nice has no effect).
func AutogroupNice(pid int) (int, bool) {
	b, err := os.ReadFile(AutogroupPath(pid))
	if err != nil {
		return 0, false
	}
	return parseAutogroup(b)
}

// parseAutogroup reads the nice out of a /proc/PID/autogroup file's content.
func parseAutogroup(b []byte) (int, bool) {
	f := strings.Fields(string(b))
	if len(f) != 3 || !strings.HasPrefix(f[0], "/autogroup-") || f[1] != "nice" {
		return 0, false
	}
	n, err := strconv.Atoi(f[2])
	if err != nil || n < -20 || n > 19 {
		return 0, false
	}
	return n, true
}

// AutogroupPath is where pid's scheduling group is read and its nice written.
func AutogroupPath(pid int) string { return "/proc/" + strconv.Itoa(pid) + "/autogroup" }

// RusageCPU is the CPU (user and system, all threads) getrusage reports for who:
// syscall.RUSAGE_SELF, this process; syscall.RUSAGE_CHILDREN, its waited-for children.
// Unlike Stat's ticks it counts in microseconds. 0 when the call fails.
func RusageCPU(who int) time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(who, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// CPU is the process's own CPU time, in user and kernel mode.
func (s *Stat) CPU() time.Duration { return time.Duration(s.UTime+s.STime) * ClockTick }

// PFKthread is the kernel's PF_KTHREAD flag (include/linux/sched.h): the process is
// a kernel thread, which takes no signals.
const PFKthread = 0x00200000

// Read reads /proc/<pid>/stat.
func Read(pid int) (*Stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	return Parse(b)
}

// Parse parses the content of /proc/<pid>/stat. The command name (field 2) may
// contain spaces and parentheses, so fields are counted after the last ')'.
func Parse(b []byte) (*Stat, error) {
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
	flags, err := strconv.ParseUint(f[6], 10, 64)
	if err != nil {
		return nil, fmt.Errorf("proc stat: flags: %w", err)
	}
	var times [4]uint64
	for i, name := range []string{"utime", "stime", "cutime", "cstime"} {
		if times[i], err = strconv.ParseUint(f[11+i], 10, 64); err != nil {
			return nil, fmt.Errorf("proc stat: %s: %w", name, err)
		}
	}
	nice, err := strconv.Atoi(f[16])
	if err != nil {
		return nil, fmt.Errorf("proc stat: nice: %w", err)
	}
	st, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return nil, fmt.Errorf("proc stat: starttime: %w", err)
	}
	return &Stat{State: f[0][0], PPID: ppid, Session: sid, Flags: flags,
		UTime: times[0], STime: times[1], CUTime: times[2], CSTime: times[3], Nice: nice, StartTime: st}, nil
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
		s, err := Read(pid)
		if err != nil || s.Session != sid || s.StartTime < minStart || s.State == 'Z' {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}
