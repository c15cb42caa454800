//go:build linux

package confine

// The agent's seccomp filter: an allowlist. What a shell, coreutils, git, python,
// node, a compiler toolchain, make, curl and pip/npm call is allowed; every other
// syscall the tables know is refused with EPERM (a program sees an ordinary
// permission error and can carry on, where a kill would look like a crash).

import (
	"fmt"
	"slices"

	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// allowedSyscalls run unchecked. A name missing from an architecture's table (fork,
// open, stat… on arm64) is skipped for that architecture. socket, clone, clone3 and
// unshare are not here: the filter checks their arguments first.
//
// Refused on purpose (absent here): io_uring_* (its operations, socket creation
// included, are not seen by seccomp), ptrace, process_vm_*, pidfd_getfd, kcmp and
// process_madvise (reach into another process), bpf, perf_event_open, userfaultfd,
// the keyring (add_key, request_key, keyctl), mount and the new mount API, chroot,
// pivot_root, setns, open_by_handle_at and name_to_handle_at, fanotify, module
// loading, kexec, reboot, swap, acct, quotactl, syslog, vhangup, clock setting,
// sethostname/setdomainname, modify_ldt/iopl/ioperm, lookup_dcookie, nfsservctl,
// uselib, move_pages/migrate_pages, memfd_secret and lsm_*.
var allowedSyscalls = []string{
	// files and directories
	"read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "preadv2", "pwritev", "pwritev2",
	"open", "openat", "openat2", "creat", "close", "close_range", "lseek",
	"stat", "fstat", "lstat", "newfstatat", "fstatat", "statx", "statfs", "fstatfs",
	"access", "faccessat", "faccessat2", "getdents", "getdents64", "getcwd", "chdir", "fchdir",
	"mkdir", "mkdirat", "rmdir", "unlink", "unlinkat", "rename", "renameat", "renameat2",
	"link", "linkat", "symlink", "symlinkat", "readlink", "readlinkat", "mknod", "mknodat",
	"chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat", "umask",
	"truncate", "ftruncate", "fallocate", "fsync", "fdatasync", "sync", "syncfs", "sync_file_range",
	"fadvise64", "readahead", "flock", "fcntl", "ioctl", "dup", "dup2", "dup3", "pipe", "pipe2",
	"utime", "utimes", "utimensat", "futimesat",
	"getxattr", "lgetxattr", "fgetxattr", "setxattr", "lsetxattr", "fsetxattr",
	"listxattr", "llistxattr", "flistxattr", "removexattr", "lremovexattr", "fremovexattr",
	"getxattrat", "setxattrat", "listxattrat", "removexattrat",
	"sendfile", "splice", "tee", "vmsplice", "copy_file_range", "cachestat",
	// what /proc/self/mountinfo shows already; newer libmount asks these first
	"listmount", "statmount",
	"inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
	"io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents",
	// memory
	"brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "msync", "mincore",
	"mlock", "mlock2", "munlock", "mlockall", "munlockall", "remap_file_pages",
	"memfd_create", "membarrier", "pkey_alloc", "pkey_free", "pkey_mprotect",
	"get_mempolicy", "set_mempolicy", "set_mempolicy_home_node", "mbind", "map_shadow_stack", "mseal",
	// processes, threads, signals
	"execve", "execveat", "fork", "vfork", "exit", "exit_group", "wait4", "waitid",
	"kill", "tkill", "tgkill", "pidfd_open", "pidfd_send_signal", "process_mrelease",
	"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigsuspend",
	"rt_sigtimedwait", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "sigaltstack", "signalfd", "signalfd4",
	"pause", "alarm", "getitimer", "setitimer", "restart_syscall",
	"futex", "futex_waitv", "futex_wake", "futex_wait", "futex_requeue",
	"set_robust_list", "get_robust_list", "set_tid_address", "rseq", "arch_prctl",
	"set_thread_area", "get_thread_area", "prctl", "personality", "seccomp",
	"landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
	"sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getparam", "sched_setparam",
	"sched_getscheduler", "sched_setscheduler", "sched_getattr", "sched_setattr",
	"sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval",
	"getpriority", "setpriority", "ioprio_get", "ioprio_set", "getcpu",
	// identity and limits (changing them needs capabilities the agent lacks)
	"getpid", "getppid", "gettid", "getuid", "geteuid", "getgid", "getegid",
	"getresuid", "getresgid", "getgroups", "getpgid", "getpgrp", "getsid",
	"setpgid", "setsid", "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid",
	"setgroups", "setfsuid", "setfsgid", "capget", "capset",
	"getrlimit", "setrlimit", "prlimit64", "getrusage", "times", "sysinfo", "uname",
	// time
	"clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday", "time", "adjtimex",
	"timer_create", "timer_delete", "timer_gettime", "timer_settime", "timer_getoverrun",
	"timerfd_create", "timerfd_gettime", "timerfd_settime",
	// polling and events
	"poll", "ppoll", "select", "pselect6", "epoll_create", "epoll_create1", "epoll_ctl",
	"epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2", "getrandom",
	// sockets (socket itself is argument-checked)
	"socketpair", "bind", "listen", "accept", "accept4", "connect", "shutdown",
	"getsockname", "getpeername", "getsockopt", "setsockopt",
	"sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg",
	// System V and POSIX IPC
	"shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semctl",
	"msgget", "msgsnd", "msgrcv", "msgctl",
	"mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
}

// newestKnownSyscall: numbers above the newest syscall the tables know return ENOSYS,
// as a kernel without that syscall would, so a newer libc takes its fallback instead
// of failing on EPERM.
func newestKnownSyscall(a *arch.Info) uint32 {
	var m int
	for n := range a.SyscallNumbers {
		if n > m && n < 0x1000 { // arm's private range (0xf0000+) is not arm64's
			m = n
		}
	}
	return uint32(m)
}

// archInfo is the syscall table of the architecture whose audit id is auditArch.
func archInfo(audit uint32) (*arch.Info, error) {
	switch audit {
	case unix.AUDIT_ARCH_X86_64:
		return arch.X86_64, nil
	case unix.AUDIT_ARCH_AARCH64:
		return arch.AARCH64, nil
	}
	return nil, fmt.Errorf("confine: no seccomp syscall table for audit arch %#x", audit)
}

// syscallRange is an inclusive range of allowed syscall numbers.
type syscallRange struct{ lo, hi uint32 }

// allowedRanges turns the allowlist into sorted, merged ranges of numbers for a.
func allowedRanges(a *arch.Info) []syscallRange {
	var nrs []uint32
	for _, name := range allowedSyscalls {
		if nr, ok := a.SyscallNames[name]; ok {
			nrs = append(nrs, uint32(nr))
		}
	}
	slices.Sort(nrs)
	nrs = slices.Compact(nrs)
	var out []syscallRange
	for _, n := range nrs {
		if len(out) > 0 && out[len(out)-1].hi+1 == n {
			out[len(out)-1].hi = n
			continue
		}
		out = append(out, syscallRange{n, n})
	}
	return out
}

// Filter return values.
var (
	retAllow  = uint32(unix.SECCOMP_RET_ALLOW)
	retEPERM  = uint32(unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM))
	retENOSYS = uint32(unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS))
	retKill   = uint32(unix.SECCOMP_RET_KILL_PROCESS)
)

// seccomp_data offsets; only the low 32 bits of an int argument reach the kernel, so
// the filter compares those alone (a filter comparing all 64 bits is bypassed by
// setting the high half). Both architectures are little-endian.
const (
	offNr   = 0
	offArch = 4
	offArg0 = 16
)

// buildFilter assembles the agent's filter for the architecture with audit id audit:
//
//  1. a foreign ABI (i386 on amd64, arm32 on arm64, x32 numbers) kills the process:
//     no agent program is built for it, and it would reach other syscall numbers;
//  2. socket(AF_VSOCK|AF_PACKET) and clone/unshare with CLONE_NEWUSER return EPERM,
//     clone3 ENOSYS (its flags live in memory a filter cannot read, so libc falls
//     back to clone, which is checked);
//  3. numbers past the newest known syscall return ENOSYS;
//  4. the allowlist, searched as a binary tree of number ranges (a few comparisons
//     per syscall instead of hundreds), allows; anything else returns EPERM.
func buildFilter(audit uint32) ([]bpf.Instruction, error) {
	a, err := archInfo(audit)
	if err != nil {
		return nil, err
	}
	nr := func(name string) (uint32, error) {
		n, ok := a.SyscallNames[name]
		if !ok {
			return 0, fmt.Errorf("confine: %s has no syscall %s", a.Name, name)
		}
		return uint32(n), nil
	}
	var socketNr, cloneNr, unshareNr, clone3Nr uint32
	for _, p := range []struct {
		name string
		dst  *uint32
	}{{"socket", &socketNr}, {"clone", &cloneNr}, {"unshare", &unshareNr}, {"clone3", &clone3Nr}} {
		if *p.dst, err = nr(p.name); err != nil {
			return nil, err
		}
	}
	p := &prog{}
	p.add(bpf.LoadAbsolute{Off: offArch, Size: 4})
	p.add(bpf.JumpIf{Cond: bpf.JumpEqual, Val: audit, SkipTrue: 1})
	p.add(bpf.RetConstant{Val: retKill})
	p.add(bpf.LoadAbsolute{Off: offNr, Size: 4})
	if audit == unix.AUDIT_ARCH_X86_64 {
		p.add(bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: 0x40000000, SkipTrue: 0, SkipFalse: 1})
		p.add(bpf.RetConstant{Val: retKill})
	}
	// Checked syscalls: each jumps to its own block after the tree.
	p.add(bpf.JumpIf{Cond: bpf.JumpEqual, Val: socketNr, SkipFalse: 1})
	p.jumpTo("socket")
	p.add(bpf.JumpIf{Cond: bpf.JumpEqual, Val: cloneNr, SkipFalse: 1})
	p.jumpTo("flags")
	p.add(bpf.JumpIf{Cond: bpf.JumpEqual, Val: unshareNr, SkipFalse: 1})
	p.jumpTo("flags")
	p.add(bpf.JumpIf{Cond: bpf.JumpEqual, Val: clone3Nr, SkipFalse: 1})
	p.add(bpf.RetConstant{Val: retENOSYS})
	p.add(bpf.JumpIf{Cond: bpf.JumpGreaterThan, Val: newestKnownSyscall(a), SkipFalse: 1})
	p.add(bpf.RetConstant{Val: retENOSYS})
	p.tree(allowedRanges(a))
	// socket(domain, …)
	p.label("socket")
	p.add(bpf.LoadAbsolute{Off: offArg0, Size: 4})
	p.add(bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.AF_VSOCK, SkipTrue: 2})
	p.add(bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.AF_PACKET, SkipTrue: 1})
	p.add(bpf.RetConstant{Val: retAllow})
	p.add(bpf.RetConstant{Val: retEPERM})
	// clone(flags, …) and unshare(flags): flags are args[0] on amd64 and arm64
	p.label("flags")
	p.add(bpf.LoadAbsolute{Off: offArg0, Size: 4})
	p.add(bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: unix.CLONE_NEWUSER, SkipTrue: 1})
	p.add(bpf.RetConstant{Val: retAllow})
	p.add(bpf.RetConstant{Val: retEPERM})
	return p.resolve()
}

// prog is a BPF program under construction with forward jumps to labels (ja has a
// 32-bit offset; conditional jumps only 8 bits, so long ones go through a ja).
type prog struct {
	ins    []bpf.Instruction
	labels map[string]int
	fixups map[int]string // index of a Jump → label
}

func (p *prog) add(i bpf.Instruction) { p.ins = append(p.ins, i) }

func (p *prog) jumpTo(label string) {
	if p.fixups == nil {
		p.fixups = map[int]string{}
	}
	p.fixups[len(p.ins)] = label
	p.add(bpf.Jump{})
}

func (p *prog) label(name string) {
	if p.labels == nil {
		p.labels = map[string]int{}
	}
	p.labels[name] = len(p.ins)
}

func (p *prog) resolve() ([]bpf.Instruction, error) {
	for at, name := range p.fixups {
		to, ok := p.labels[name]
		if !ok || to <= at {
			return nil, fmt.Errorf("confine: seccomp filter: bad jump to %q", name)
		}
		p.ins[at] = bpf.Jump{Skip: uint32(to - at - 1)}
	}
	if len(p.ins) > unix.BPF_MAXINSNS {
		return nil, fmt.Errorf("confine: seccomp filter has %d instructions (max %d)", len(p.ins), unix.BPF_MAXINSNS)
	}
	return p.ins, nil
}

// leafSize is how many ranges a leaf of the search tree tests one after another.
const leafSize = 4

// tree emits a binary search over rs (sorted, disjoint): allow when the number in A
// falls in one of them, EPERM otherwise. Every path ends in its own return.
func (p *prog) tree(rs []syscallRange) {
	if len(rs) <= leafSize {
		// For each range: below lo → refuse (ranges are sorted, and this subtree's
		// numbers are ≥ its first lo or were sent here by a ≥ test); ≤ hi → allow.
		for _, r := range rs {
			if r.lo == r.hi {
				p.add(bpf.JumpIf{Cond: bpf.JumpEqual, Val: r.lo, SkipTrue: 0, SkipFalse: 1})
				p.add(bpf.RetConstant{Val: retAllow})
				continue
			}
			p.add(bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: r.lo, SkipTrue: 0, SkipFalse: 2})
			p.add(bpf.JumpIf{Cond: bpf.JumpGreaterThan, Val: r.hi, SkipTrue: 1, SkipFalse: 0})
			p.add(bpf.RetConstant{Val: retAllow})
		}
		p.add(bpf.RetConstant{Val: retEPERM})
		return
	}
	mid := len(rs) / 2
	// A ≥ rs[mid].lo → right half (through a ja: the left half may be long).
	p.add(bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: rs[mid].lo, SkipTrue: 0, SkipFalse: 1})
	at := len(p.ins)
	p.add(bpf.Jump{})
	p.tree(rs[:mid])
	p.ins[at] = bpf.Jump{Skip: uint32(len(p.ins) - at - 1)}
	p.tree(rs[mid:])
}

// assemble converts a program for the kernel.
func assemble(ins []bpf.Instruction) ([]unix.SockFilter, error) {
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
