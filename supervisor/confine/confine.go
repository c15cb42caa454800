// Package confine locks down the agent's process just before it execs the agent:
// Landlock from the policy's filesystem_policy, a seccomp filter, no capabilities, a
// non-root identity, no_new_privs and no core dumps.
//
// Apply runs in a freshly started helper process (the supervisor re-execs itself as
// `openshell-sandbox confine-exec --spec FD -- argv…`, see Command and ExecMain),
// never in the supervisor: every step is irreversible for the calling process.
//
// Order, and why:
//  1. runtime.LockOSThread: capset(2) and the final execve act on one thread.
//  2. RLIMIT_CORE = 0: a crashing agent must not dump memory holding secrets.
//  3. Landlock (filesystem_policy): done while still root, because building the
//     ruleset opens every listed path and the agent's uid may not be able to.
//     best_effort downgrades to what the kernel supports (or nothing); under
//     hard_requirement a kernel without Landlock is an error (fail closed).
//  4. Capability bounding set emptied (needs CAP_SETPCAP, so before the uid change).
//     A spare helper (SpareCommand) empties it for its exec thread already while
//     it waits for its command; here it is then found empty.
//  5. setgroups, setresgid, setresuid to the sandbox user (Go applies them to all
//     threads). Refuses uid 0 / gid 0.
//  6. Ambient set cleared and effective/permitted/inheritable zeroed with capset.
//  7. no_new_privs: setuid binaries and file capabilities stay inert after exec.
//  8. seccomp (one filter, TSYNC), an allowlist: what shells, coreutils, git,
//     interpreters, compilers and network clients call is allowed; every other
//     known syscall returns EPERM (io_uring, ptrace, bpf, mount, kexec, modules,
//     the keyring, namespace entry…; see allowedSyscalls). Sockets of family
//     AF_VSOCK and AF_PACKET and clone/unshare with CLONE_NEWUSER return EPERM;
//     clone3 returns ENOSYS (its flags live in memory a filter cannot read, so libc
//     falls back to clone); numbers newer than the tables return ENOSYS; a foreign
//     syscall ABI kills the process.
//  9. The caller execs the agent (ExecMain does it on the same locked thread).
//
// The helpers (ExecMain, a spare) exec the agent right after, from the thread they
// confined, and confine that thread alone (applyForExec): Landlock, the bounding
// set, the ids, no_new_privs and seccomp are per-thread state that execve keeps,
// and execve ends the other threads before the agent's program runs. Apply, for
// a process that goes on running Go code, does every step on all threads.
//
// Failure modes: every error is returned and the caller must exit without exec'ing
// the agent; a partly applied confinement is never "good enough". Errors name the
// step. Landlock under best_effort is the only step allowed to degrade, and Result
// says what was actually enforced.
package confine

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/openshell/openshell/supervisor/policy"
)

// Spec is what the helper needs; it travels as JSON over an inherited pipe.
type Spec struct {
	UID    int   `json:"uid"`
	GID    int   `json:"gid"`
	Groups []int `json:"groups,omitempty"`
	// ReadOnly and ReadWrite are the Landlock rules (absolute paths; missing paths
	// are skipped). The workdir is already in ReadWrite when include_workdir is set.
	ReadOnly  []string `json:"read_only,omitempty"`
	ReadWrite []string `json:"read_write,omitempty"`
	// LandlockHard makes missing kernel Landlock support an error.
	LandlockHard bool `json:"landlock_hard,omitempty"`
	// NoLandlock skips Landlock entirely (for a policy that has no filesystem_policy
	// at all); seccomp, capabilities and identity still apply.
	NoLandlock bool `json:"no_landlock,omitempty"`
}

// SpecFromPolicy derives a Spec from a policy for the agent running as uid/gid in
// workdir.
func SpecFromPolicy(p *policy.Policy, uid, gid int, groups []int, workdir string) Spec {
	s := Spec{UID: uid, GID: gid, Groups: groups, LandlockHard: p.LandlockHard(),
		ReadOnly: slices.Clone(p.Filesystem.ReadOnly), ReadWrite: slices.Clone(p.Filesystem.ReadWrite)}
	if p.Filesystem.IncludeWorkdir && workdir != "" {
		s.ReadWrite = append(s.ReadWrite, workdir)
	}
	return s
}

// Validate names the first bad field.
func (s *Spec) Validate() error {
	switch {
	case s.UID <= 0:
		return fmt.Errorf("confine: spec.uid %d: the agent must run as a non-root uid", s.UID)
	case s.GID <= 0:
		return fmt.Errorf("confine: spec.gid %d: the agent must run with a non-root gid", s.GID)
	case slices.Contains(s.Groups, 0):
		return errors.New("confine: spec.groups contains 0 (root group)")
	}
	for _, p := range append(slices.Clone(s.ReadOnly), s.ReadWrite...) {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("confine: path %q is not absolute", p)
		}
	}
	return nil
}

// Marshal encodes the spec for the helper.
func (s Spec) Marshal() ([]byte, error) { return json.Marshal(s) }

// ParseSpec decodes and validates a spec.
func ParseSpec(b []byte) (Spec, error) {
	var s Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return Spec{}, fmt.Errorf("confine: bad spec: %w", err)
	}
	return s, s.Validate()
}

// Result says what Apply enforced.
type Result struct {
	LandlockABI int // kernel Landlock ABI used; 0 = Landlock not enforced (best_effort on a kernel without it)
}
