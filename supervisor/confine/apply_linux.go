//go:build linux && (amd64 || arm64)

package confine

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"github.com/elastic/go-seccomp-bpf"
	"github.com/landlock-lsm/go-landlock/landlock"
	llsys "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Apply confines the calling process (see the package doc for the order). It leaves
// the calling goroutine locked to its OS thread: exec from that goroutine.
func Apply(s Spec) (Result, error) {
	var res Result
	if err := s.Validate(); err != nil {
		return res, err
	}
	runtime.LockOSThread()

	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{}); err != nil {
		return res, fmt.Errorf("confine: RLIMIT_CORE=0: %w", err)
	}
	lastCap, err := lastCapability()
	if err != nil {
		return res, err
	}
	if !s.NoLandlock {
		abi, err := applyLandlock(s)
		if err != nil {
			return res, err
		}
		res.LandlockABI = abi
	}
	// The bounding set is per thread: drop it on every thread when the runtime can
	// (no cgo), and always on this one, which execs the agent.
	// Without CAP_SETPCAP (a container engine that did not grant it) the bounding set
	// cannot shrink: what is left of it is inert for a non-root uid under
	// no_new_privs (no setuid, no file capabilities), so that is not an error.
	canDrop := hasEffectiveCap(unix.CAP_SETPCAP)
	for c := 0; c <= lastCap && canDrop; c++ {
		if in, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0); err == nil && in == 0 {
			continue // not in the bounding set
		}
		if _, _, e := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, uintptr(c), 0); e != 0 && e != unix.EINVAL && e != unix.ENOTSUP {
			return res, fmt.Errorf("confine: drop capability %d from the bounding set: %w", c, e)
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return res, fmt.Errorf("confine: drop capability %d from the bounding set: %w", c, err)
		}
	}
	groups := s.Groups
	if groups == nil {
		groups = []int{}
	}
	if err := syscall.Setgroups(groups); err != nil {
		return res, fmt.Errorf("confine: setgroups %v: %w", groups, err)
	}
	if err := syscall.Setresgid(s.GID, s.GID, s.GID); err != nil {
		return res, fmt.Errorf("confine: setresgid %d: %w", s.GID, err)
	}
	if err := syscall.Setresuid(s.UID, s.UID, s.UID); err != nil {
		return res, fmt.Errorf("confine: setresuid %d: %w", s.UID, err)
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return res, fmt.Errorf("confine: clear ambient capabilities: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return res, fmt.Errorf("confine: clear capability sets: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return res, fmt.Errorf("confine: no_new_privs: %w", err)
	}
	if err := loadSeccomp(); err != nil {
		return res, err
	}
	return res, nil
}

// hasEffectiveCap reports whether this thread has capability c in its effective set.
func hasEffectiveCap(c int) bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return true // unknown: try, and let the drop report a real failure
	}
	return data[c/32].Effective&(1<<(uint(c)%32)) != 0
}

func lastCapability() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 63, nil // unknown: try them all (EINVAL past the last is ignored)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("confine: parse cap_last_cap: %w", err)
	}
	return n, nil
}

// landlockABI is the kernel's Landlock ABI version (a variable so that tests can
// play a kernel without Landlock).
var landlockABI = llsys.LandlockGetABIVersion

func applyLandlock(s Spec) (int, error) {
	abi, err := landlockABI()
	if err != nil || abi < 1 {
		if s.LandlockHard {
			return 0, fmt.Errorf("confine: Landlock is required (landlock.compatibility: hard_requirement) but the kernel does not offer it (%v): use a kernel with CONFIG_SECURITY_LANDLOCK and lsm=landlock, or set best_effort", err)
		}
		return 0, nil
	}
	var rules []landlock.Rule
	for _, p := range s.ReadOnly {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			rules = append(rules, landlock.ROFiles(p).IgnoreIfMissing())
		} else {
			rules = append(rules, landlock.RODirs(p).IgnoreIfMissing())
		}
	}
	for _, p := range s.ReadWrite {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			rules = append(rules, landlock.RWFiles(p).WithIoctlDev().IgnoreIfMissing())
		} else {
			rules = append(rules, landlock.RWDirs(p).WithRefer().WithIoctlDev().IgnoreIfMissing())
		}
	}
	// The newest config the library knows, downgraded to the kernel's ABI. Under
	// hard_requirement the kernel has Landlock (checked above); what it cannot
	// restrict beyond its ABI is not an error either way.
	if err := landlock.V11.BestEffort().RestrictPaths(rules...); err != nil {
		return 0, fmt.Errorf("confine: Landlock: %w", err)
	}
	return abi, nil
}

// deniedSyscalls return EPERM. Names are the same on amd64 and arm64.
var deniedSyscalls = []string{
	"ptrace", "process_vm_readv", "process_vm_writev",
	"bpf", "perf_event_open", "userfaultfd",
	"mount", "umount2", "pivot_root", "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
	"kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
	"keyctl", "add_key", "request_key", "setns", "open_by_handle_at",
	"swapon", "swapoff", "reboot", "acct", "quotactl",
}

func loadSeccomp() error {
	f := seccomp.Filter{
		NoNewPrivs: true,
		Flag:       seccomp.FilterFlagTSync,
		Policy: seccomp.Policy{
			DefaultAction: seccomp.ActionAllow,
			Syscalls:      []seccomp.SyscallGroup{{Action: seccomp.ActionErrno, Names: deniedSyscalls}},
		},
	}
	if err := seccomp.LoadFilter(f); err != nil {
		return fmt.Errorf("confine: seccomp syscall filter: %w", err)
	}
	prog, err := argFilter()
	if err != nil {
		return fmt.Errorf("confine: assemble seccomp argument filter: %w", err)
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if _, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog))); e != 0 {
		return fmt.Errorf("confine: seccomp argument filter: %w", e)
	}
	return nil
}

// argFilter checks arguments the name-based filter cannot: only the low 32 bits of an
// int argument reach the kernel, so it compares those alone (a filter comparing all
// 64 bits is bypassed by setting the high half).
func argFilter() ([]unix.SockFilter, error) {
	const (
		offNr   = 0
		offArch = 4
		offArg0 = 16 // low half of args[0] on little-endian
	)
	eperm := uint32(unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM))
	enosys := uint32(unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS))
	allow := uint32(unix.SECCOMP_RET_ALLOW)
	kill := uint32(unix.SECCOMP_RET_KILL_PROCESS)
	ins := []bpf.Instruction{
		/* 0 */ bpf.LoadAbsolute{Off: offArch, Size: 4},
		/* 1 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: auditArch, SkipTrue: 1},
		/* 2 */ bpf.RetConstant{Val: kill}, // foreign ABI: never legitimate here
		/* 3 */ bpf.LoadAbsolute{Off: offNr, Size: 4},
		/* 4 */ bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: 0x40000000, SkipTrue: 14}, // x32 numbers on amd64
		/* 5 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.SYS_SOCKET, SkipTrue: 4},
		/* 6 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.SYS_CLONE, SkipTrue: 7},
		/* 7 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.SYS_UNSHARE, SkipTrue: 6},
		/* 8 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.SYS_CLONE3, SkipTrue: 9},
		/* 9 */ bpf.RetConstant{Val: allow},
		// socket(domain, …)
		/* 10 */ bpf.LoadAbsolute{Off: offArg0, Size: 4},
		/* 11 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.AF_VSOCK, SkipTrue: 5},
		/* 12 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.AF_PACKET, SkipTrue: 4},
		/* 13 */ bpf.RetConstant{Val: allow},
		// clone(flags, …) and unshare(flags): flags are args[0] on amd64 and arm64
		/* 14 */ bpf.LoadAbsolute{Off: offArg0, Size: 4},
		/* 15 */ bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: unix.CLONE_NEWUSER, SkipTrue: 1},
		/* 16 */ bpf.RetConstant{Val: allow},
		/* 17 */ bpf.RetConstant{Val: eperm},
		/* 18 */ bpf.RetConstant{Val: enosys},
		/* 19 */ bpf.RetConstant{Val: kill},
	}
	raw, err := bpf.Assemble(ins)
	if err != nil {
		return nil, err
	}
	out := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		out[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	return out, nil
}
