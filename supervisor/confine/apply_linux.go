//go:build linux && (amd64 || arm64)

package confine

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"github.com/landlock-lsm/go-landlock/landlock"
	llsys "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"golang.org/x/sys/unix"
)

// Apply confines the calling process (see the package doc for the order). It leaves
// the calling goroutine locked to its OS thread: exec from that goroutine.
func Apply(s Spec) (Result, error) { return apply(s, nil, false) }

// applyForExec confines the calling thread only, for a caller that execs the agent
// from it next (the helpers do): execve keeps that thread's credentials, Landlock
// domain, no_new_privs and seccomp filter, and ends every other thread first, so
// the program runs exactly as confined as after Apply. The other threads of the
// helper (the Go runtime's, which run none of the agent's code) are not stopped
// once per step: each step on all threads interrupts every thread, which cost a
// spare 17 ms of a 50 ms exec (p50) in a guest under emulation. pr is a Landlock
// ruleset built ahead (nil: none), used only when it was built for s exactly.
func applyForExec(s Spec, pr *preparedRuleset) (Result, error) { return apply(s, pr, true) }

func apply(s Spec, pr *preparedRuleset, thread bool) (Result, error) {
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
		abi, err := applyLandlock(s, pr, thread)
		if err != nil {
			return res, err
		}
		res.LandlockABI = abi
	}
	drop := dropBoundingSet
	if thread {
		drop = dropThreadBoundingSet
	}
	if err := drop(lastCap); err != nil {
		return res, err
	}
	groups := s.Groups
	if groups == nil {
		groups = []int{}
	}
	if err := setIDs(groups, s.GID, s.UID, thread); err != nil {
		return res, err
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
	if err := loadSeccomp(thread); err != nil {
		return res, err
	}
	return res, nil
}

// setIDs switches to groups, gid and uid: on every thread (Go's calls), or with
// thread on the calling one only (the raw system calls; the kernel keeps
// credentials per thread).
func setIDs(groups []int, gid, uid int, thread bool) error {
	if !thread {
		if err := syscall.Setgroups(groups); err != nil {
			return fmt.Errorf("confine: setgroups %v: %w", groups, err)
		}
		if err := syscall.Setresgid(gid, gid, gid); err != nil {
			return fmt.Errorf("confine: setresgid %d: %w", gid, err)
		}
		if err := syscall.Setresuid(uid, uid, uid); err != nil {
			return fmt.Errorf("confine: setresuid %d: %w", uid, err)
		}
		return nil
	}
	gids := make([]uint32, len(groups)+1) // one spare element: &gids[0] is valid for none
	for i, g := range groups {
		gids[i] = uint32(g)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(groups)), uintptr(unsafe.Pointer(&gids[0])), 0); e != 0 {
		return fmt.Errorf("confine: setgroups %v: %w", groups, e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(gid), uintptr(gid), uintptr(gid)); e != 0 {
		return fmt.Errorf("confine: setresgid %d: %w", gid, e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid)); e != 0 {
		return fmt.Errorf("confine: setresuid %d: %w", uid, e)
	}
	return nil
}

// dropBoundingSet empties the capability bounding set. It is per thread: drop it on
// every thread when the runtime can (no cgo), and always on this one, which execs
// the agent. Without CAP_SETPCAP (a container engine that did not grant it) the
// bounding set cannot shrink: what is left of it is inert for a non-root uid under
// no_new_privs (no setuid, no file capabilities), so that is not an error.
// Capabilities already gone from this thread cost one read each: a spare helper
// empties the set of the thread that will exec the agent while it waits
// (dropThreadBoundingSet), and Apply then finds nothing left.
func dropBoundingSet(lastCap int) error {
	canDrop := hasEffectiveCap(unix.CAP_SETPCAP)
	for c := 0; c <= lastCap && canDrop; c++ {
		if in, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0); err == nil && in == 0 {
			continue // not in the bounding set
		}
		if _, _, e := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, uintptr(c), 0); e != 0 && e != unix.EINVAL && e != unix.ENOTSUP {
			return fmt.Errorf("confine: drop capability %d from the bounding set: %w", c, e)
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("confine: drop capability %d from the bounding set: %w", c, err)
		}
	}
	return nil
}

// dropThreadBoundingSet empties the bounding set of the calling thread only, which
// must be locked to its goroutine and be the one that execs the agent. The other
// threads of the runtime end at that exec and never exec anything themselves; an
// all-threads drop stops every one of them per capability, which costs a spare
// under emulation as much as its whole start (70-250 ms measured in a TCG guest).
func dropThreadBoundingSet(lastCap int) error {
	if !hasEffectiveCap(unix.CAP_SETPCAP) {
		return nil // Apply says why that is not an error
	}
	for c := 0; c <= lastCap; c++ {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("confine: drop capability %d from the bounding set: %w", c, err)
		}
	}
	return nil
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

// CheckLandlock reports the Landlock ABI the running kernel enforces (0: none). It
// asks the kernel (landlock_create_ruleset with LANDLOCK_CREATE_RULESET_VERSION),
// which answers only when Landlock is both built in and enabled at boot (in lsm=).
// With hard set, a kernel without it is an error that names the cause and the fix.
func CheckLandlock(hard bool) (int, error) {
	abi, err := landlockABI()
	if err == nil && abi >= 1 {
		return abi, nil
	}
	if !hard {
		return 0, nil
	}
	if err == nil {
		err = fmt.Errorf("ABI %d", abi)
	}
	why := fmt.Sprintf("the kernel does not enforce Landlock (%v)", err)
	switch {
	case errors.Is(err, unix.EOPNOTSUPP):
		why = "the kernel has Landlock built in but not enabled at boot (landlock_create_ruleset: EOPNOTSUPP)"
	case errors.Is(err, unix.ENOSYS):
		why = "the kernel is built without Landlock (landlock_create_ruleset: ENOSYS)"
	}
	if b, rerr := os.ReadFile("/sys/kernel/security/lsm"); rerr == nil {
		why += "; active LSMs: " + strings.TrimSpace(string(b))
	}
	return 0, fmt.Errorf("confine: Landlock is required (landlock.compatibility: hard_requirement) but %s: boot a kernel with CONFIG_SECURITY_LANDLOCK=y and landlock in its lsm= list, or set landlock.compatibility: best_effort", why)
}

func applyLandlock(s Spec, pr *preparedRuleset, thread bool) (int, error) {
	if thread && pr.matches(s) {
		return pr.abi, restrictThread(pr.fd, pr.flags)
	}
	abi, err := CheckLandlock(s.LandlockHard)
	if err != nil || abi == 0 {
		return 0, err
	}
	if thread {
		fd, flags, err := landlockConfig.NewRulesetFD(landlockRules(s)...)
		if err != nil {
			return 0, fmt.Errorf("confine: Landlock: %w", err)
		}
		if fd < 0 {
			return abi, nil // nothing the kernel can restrict
		}
		defer unix.Close(fd)
		return abi, restrictThread(fd, flags)
	}
	// The newest config the library knows, downgraded to the kernel's ABI. Under
	// hard_requirement the kernel has Landlock (checked above); what it cannot
	// restrict beyond its ABI is not an error either way.
	if err := landlockConfig.RestrictPaths(landlockRules(s)...); err != nil {
		return 0, fmt.Errorf("confine: Landlock: %w", err)
	}
	return abi, nil
}

// landlockConfig is the newest config the library knows, for the filesystem only
// (as RestrictPaths narrows it; the network is the proxy's), best effort.
var landlockConfig = func() landlock.Config {
	c := landlock.V11
	c.HandledAccessNet, c.Scoped = 0, 0
	return c.BestEffort()
}()

// landlockRules are the spec's paths as Landlock rules; a path's kind (file or
// directory) is decided now, and a missing path is skipped.
func landlockRules(s Spec) []landlock.Rule {
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
	return rules
}

// A preparedRuleset is the Landlock ruleset of a spec, built ahead of Apply: a
// spare helper builds it while it waits for its command (opening every listed path
// and adding it as a rule is most of a spare's work after the hand-over, 5-50 ms
// in a guest under software emulation). Apply enforces it only for exactly the
// spec it was built for. The rules hold the files the paths named when the ruleset
// was built, as a ruleset built in Apply holds those of that moment.
type preparedRuleset struct {
	spec  Spec
	fd    int // close-on-exec (every Landlock ruleset fd is)
	flags uint32
	abi   int
}

// prepareLandlock builds s's ruleset. nil (and no error) when there is nothing to
// prepare (no Landlock in s or in the kernel): Apply then does what it always does,
// reporting a kernel without Landlock under hard_requirement.
func prepareLandlock(s Spec) (*preparedRuleset, error) {
	if s.NoLandlock || s.Validate() != nil {
		return nil, nil
	}
	abi, err := CheckLandlock(false)
	if err != nil || abi == 0 {
		return nil, err
	}
	fd, flags, err := landlockConfig.NewRulesetFD(landlockRules(s)...)
	if err != nil {
		return nil, fmt.Errorf("confine: Landlock: %w", err)
	}
	if fd < 0 {
		return nil, nil // nothing to restrict: let Apply find that out itself
	}
	return &preparedRuleset{spec: s, fd: fd, flags: flags, abi: abi}, nil
}

// matches reports whether pr was built for exactly s.
func (pr *preparedRuleset) matches(s Spec) bool {
	return pr != nil && pr.fd >= 0 && reflect.DeepEqual(normalSpec(pr.spec), normalSpec(s))
}

// normalSpec makes nil and empty lists equal (JSON turns one into the other).
func normalSpec(s Spec) Spec {
	for _, l := range []*[]string{&s.ReadOnly, &s.ReadWrite} {
		if len(*l) == 0 {
			*l = nil
		}
	}
	if len(s.Groups) == 0 {
		s.Groups = nil
	}
	return s
}

func (pr *preparedRuleset) close() {
	if pr != nil && pr.fd >= 0 {
		unix.Close(pr.fd)
		pr.fd = -1
	}
}

// restrictThread enforces a ruleset on the calling thread, the library's way for a
// thread that execs next: no_new_privs first (landlock_restrict_self requires it
// or CAP_SYS_ADMIN), then the ruleset.
func restrictThread(fd int, flags uint32) error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("confine: Landlock: no_new_privs: %w", err)
	}
	if err := llsys.LandlockRestrictSelf(fd, flags); err != nil {
		return fmt.Errorf("confine: Landlock: landlock_restrict_self: %w", err)
	}
	return nil
}

// seccompProgram is the agent's filter (see buildFilter), assembled once: a spare
// helper builds it while it waits for its command.
var seccompProgram = sync.OnceValues(func() ([]unix.SockFilter, error) {
	ins, err := buildFilter(auditArch)
	if err != nil {
		return nil, err
	}
	prog, err := assemble(ins)
	if err != nil {
		return nil, fmt.Errorf("confine: assemble the seccomp filter: %w", err)
	}
	return prog, nil
})

// loadSeccomp installs the agent's filter on every thread of the process (TSYNC),
// or with thread on the calling one, with no_new_privs already set.
func loadSeccomp(thread bool) error {
	prog, err := seccompProgram()
	if err != nil {
		return err
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	flags := uintptr(unix.SECCOMP_FILTER_FLAG_TSYNC)
	if thread {
		flags = 0
	}
	if _, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, flags, uintptr(unsafe.Pointer(&fprog))); e != 0 {
		return fmt.Errorf("confine: seccomp filter: %w", e)
	}
	return nil
}
