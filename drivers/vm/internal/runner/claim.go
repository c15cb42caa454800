package runner

// Warm pools. A pooled VM's runner boots the guest with no sandbox identity: its spec
// names the pool (Spec.Pool), its SandboxID is the pool member's own and its bootstrap
// document is empty. The guest's supervisor dials the bootstrap port as usual and the
// runner holds that connection open (holdingListener) until the driver claims the VM
// for a sandbox (POST /claim): the claim carries everything that is the sandbox's
// (id, name, token, policy, environment, command, the runner credential for its
// provider values, the per-sandbox gateway socket), the runner applies it to its spec
// and only then mints the instance secret, starts the gateway bridge and the egress
// relay with its policy sync, and serves the document on the held connection. Nothing
// of a sandbox exists in the VM or its runner before the claim, and a VM is claimed
// at most once: a second claim is refused (errClaimed) and the driver never puts a
// claimed VM back into its pool.
//
// What the boot binds before a claim is neutral: the state directory and disk paths
// are named after the pool member, the vsock CID is allocated by the driver among all
// its VMs (not derived from an id), the kernel command line names no sandbox, and the
// guest has no hostname until its supervisor sets the sandbox's name from the
// document. The guest's kernel random state is its own boot's (never shared: each
// pooled VM boots separately and is used once).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/drivers/vm/internal/state"
	"github.com/openshell/openshell/internal/procstat"
	"github.com/openshell/openshell/supervisor/bootstrap"
)

// Claim is the identity a pooled VM receives when a sandbox claims it.
type Claim struct {
	SandboxID   string `json:"sandbox_id"`
	SandboxName string `json:"sandbox_name"`
	// Bootstrap is the document the guest's supervisor gets (token, CA, command, env,
	// policy); the runner adds this boot's instance secret.
	Bootstrap bootstrap.Config `json:"bootstrap"`
	// Egress is the host-side egress check, with the sandbox's runner credential.
	Egress EgressPolicy `json:"egress"`
	// GatewaySocketDir holds the gateway's socket for this sandbox ("" = bridge to
	// GatewayAddr over TCP).
	GatewaySocketDir string `json:"gateway_socket_dir,omitempty"`
}

// maxClaimBytes bounds a claim request (a policy and an environment fit easily).
const maxClaimBytes = 4 << 20

// errClaimed refuses a second claim of one VM.
var errClaimed = errors.New("this pooled VM was already claimed: a pooled VM serves one sandbox only")

// Validate names the first bad field.
func (c *Claim) Validate() error {
	switch {
	case state.ValidID(c.SandboxID) != nil:
		return fmt.Errorf("claim: sandbox_id: %w", state.ValidID(c.SandboxID))
	case c.Bootstrap.SandboxID != c.SandboxID:
		return fmt.Errorf("claim: bootstrap.sandbox_id %q differs from sandbox_id %q", c.Bootstrap.SandboxID, c.SandboxID)
	case c.Bootstrap.Token == "":
		return errors.New("claim: bootstrap.token is empty: the guest could not open its session")
	case c.GatewaySocketDir != "" && !strings.HasPrefix(c.GatewaySocketDir, "/"):
		return fmt.Errorf("claim: gateway_socket_dir %q must be an absolute path", c.GatewaySocketDir)
	}
	return c.Egress.Validate()
}

// apply makes spec the claimed sandbox's: from here on the runner is that sandbox's.
func (c *Claim) apply(spec *Spec) {
	spec.SandboxID, spec.SandboxName = c.SandboxID, c.SandboxName
	spec.Bootstrap, spec.Egress, spec.GatewaySocketDir = c.Bootstrap, c.Egress, c.GatewaySocketDir
	spec.Pool = ""
}

// claimBox takes at most one claim and hands it to the runner's main loop.
type claimBox struct {
	once sync.Once
	ch   chan *Claim
}

func newClaimBox() *claimBox { return &claimBox{ch: make(chan *Claim, 1)} }

// take validates c and delivers it; every later claim is refused.
func (b *claimBox) take(c *Claim) error {
	if err := c.Validate(); err != nil {
		return err
	}
	err := errClaimed
	b.once.Do(func() { b.ch <- c; err = nil })
	return err
}

// holdingListener accepts guest connections on l one at a time and holds each until
// Accept is called: a pooled VM's guest dials the bootstrap port long before there is
// a document to serve, and its connection stays open (the guest waits on it) until
// the claim. waiting is called once, when the first connection arrives.
type holdingListener struct {
	net.Listener
	conns   chan net.Conn
	done    chan struct{}
	once    sync.Once
	waiting func()
}

func newHoldingListener(l net.Listener, waiting func()) *holdingListener {
	h := &holdingListener{Listener: l, conns: make(chan net.Conn), done: make(chan struct{}), waiting: waiting}
	go h.loop()
	return h
}

func (h *holdingListener) loop() {
	var first sync.Once
	for {
		c, err := h.Listener.Accept()
		if err != nil {
			h.Close()
			return
		}
		first.Do(h.waiting)
		select {
		case h.conns <- c:
		case <-h.done:
			c.Close()
			return
		}
	}
}

func (h *holdingListener) Accept() (net.Conn, error) {
	select {
	case c := <-h.conns:
		return c, nil
	case <-h.done:
		return nil, net.ErrClosed
	}
}

func (h *holdingListener) Close() error {
	var err error
	h.once.Do(func() {
		close(h.done)
		err = h.Listener.Close()
		if errors.Is(err, net.ErrClosed) {
			err = nil
		}
	})
	return err
}

// Claim hands a pooled VM its sandbox identity. The runner answers once it has taken
// the claim; the guest then gets its document (Status turns running as usual).
func (c *Client) Claim(ctx context.Context, cl *Claim) error {
	b, err := json.Marshal(cl)
	if err != nil {
		return fmt.Errorf("encode claim: %w", err)
	}
	resp, err := c.do(ctx, http.MethodPost, "/claim", b)
	clear(b)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("runner %s: claim: HTTP %d: %s", c.socket, resp.StatusCode, strings.TrimSpace(string(msg)))
	}
	return nil
}

// Boot priority of a pooled VM. A pool refills while sandboxes are claimed from it,
// and a refill's cold boot under emulation takes a whole core for seconds: once the
// VMM of a pooled VM started, the runner lowers the priority of its session's other
// processes (the VMM, the channel backend), and restores it at the claim, the VMM
// first. A claimed guest's start-up then gets the CPU before a refill's boot does.
// The runner itself keeps its priority: it answers the claim.
//
// A kernel with autogroup scheduling (on by default in many distributions) makes each
// session a scheduling group of its own, and a thread's nice then ranks it only within
// its group: every runner leads its own session, so the threads' nice alone does not
// make a pooled VM yield to other VMs. The group's nice does: it is set with the
// threads', and restored first at the claim. The runner is in that group too: the
// driver restores the group's nice before it sends the claim (RestorePoolPriority), so
// the runner does not read it at the pool's priority while other VMs take the CPU.

// refillNice is the nice value of a pooled VM's VMM and backends until its claim.
const refillNice = 10

// setPoolNice sets nice on the processes of this runner's session other than the
// runner, first's threads first (0 = none), when the runner leads a session (a runner
// process started by the driver; not a runner run inside another program, as in
// tests, whose session is not its own).
func setPoolNice(nice, first int) error {
	sid, err := unix.Getsid(0)
	if err != nil || sid != os.Getpid() {
		return nil
	}
	// A claimed VM must not stay niced: a restore waits out the kernel's rate limit on
	// these changes for longer (a burst of claims by a driver without CAP_SYS_ADMIN)
	// than a lowering, which may as well be given up.
	patience := time.Second
	if nice == 0 {
		patience = 30 * time.Second
	}
	firstErr := setAutogroupNice(sid, nice, patience)
	if first > 0 && first != sid {
		_, err := setThreadsNice(first, nice)
		firstErr = errors.Join(firstErr, err)
	}
	start, err := state.ProcStartTime(sid)
	if err != nil {
		return errors.Join(firstErr, err)
	}
	return errors.Join(firstErr, setSessionNice(sid, start, nice, sid))
}

// setVMMNice sets nice on the threads of the VMM and its helper processes only (the
// pids given, the VMM first), under the same condition as setPoolNice: a claim
// restores them before anything else (the guest's start-up runs on the VMM's vCPUs and
// talks to the host through the channel backend), the rest of the session after
// (setPoolNice).
func setVMMNice(nice int, pids ...int) error {
	sid, err := unix.Getsid(0)
	if err != nil || sid != os.Getpid() {
		return nil
	}
	// One attempt: a change the kernel refuses for now is made by setPoolNice next.
	errs := []error{setAutogroupNice(sid, nice, 0)}
	for _, pid := range pids {
		if pid > 0 && pid != sid {
			_, err := setThreadsNice(pid, nice)
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// RestorePoolPriority puts the scheduling group of a pooled VM's runner session back
// at nice 0, once (the runner does it again at the claim, and retries): the driver
// calls it before it hands the runner its claim, so that the runner reads the claim
// at normal priority.
func RestorePoolPriority(runnerPID int) error {
	return setAutogroupNice(runnerPID, 0, 0)
}

// ControlPlaneNice is the nice of the driver's scheduling group (the gateway's too,
// where the gateway started the driver in its session) on a kernel with autogroups:
// above its VMs', each of which is a group at nice 0 once claimed. Without it every
// VM busy starting took an equal share of the host against the whole control plane,
// which the creates' steps go through: with five pooled creates at a time under
// emulation, the gateway's receipt to the driver's claim took up to 52 ms and the
// claim up to 114 ms, against 3-7 and 4-62 ms with the group at -5. The control
// plane's own CPU is small; what it runs in its group besides (image conversion) is
// on a cold create's path.
const ControlPlaneNice = -5

// PrioritizeControlPlane sets the scheduling group of pid's session to
// ControlPlaneNice. It needs CAP_SYS_NICE (a lower nice than 0); without it, or on a
// kernel without autogroups, the group stays as it is (an error only for the former).
func PrioritizeControlPlane(pid int) error {
	return setAutogroupNice(pid, ControlPlaneNice, 0)
}

// setAutogroupNice sets the nice of the scheduling group of pid's session, where the
// kernel has autogroups (no /proc/PID/autogroup: nothing to do) and it differs.
// Raising or restoring it to 0 needs no privilege; without CAP_SYS_ADMIN the kernel
// takes one change every 100 ms on the whole host (EAGAIN), so a refused change is
// tried again for up to patience.
func setAutogroupNice(pid, nice int, patience time.Duration) error {
	path := procstat.AutogroupPath(pid)
	for deadline := time.Now().Add(patience); ; time.Sleep(20 * time.Millisecond) {
		if cur, ok := procstat.AutogroupNice(pid); !ok || cur == nice {
			return nil
		}
		err := os.WriteFile(path, []byte(strconv.Itoa(nice)), 0)
		switch {
		case err == nil, errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ESRCH):
			return nil
		case !errors.Is(err, syscall.EAGAIN) || time.Now().After(deadline):
			return fmt.Errorf("set the nice of pid %d's scheduling group: %w", pid, err)
		}
	}
}

// setSessionNice sets nice on every thread of every process in the session led by sid
// except pid except. New threads take their creator's value, so passes repeat until
// one finds every thread set.
func setSessionNice(sid int, minStart uint64, nice, except int) error {
	var firstErr error
	for range 5 {
		changed := false
		for _, pid := range procstat.SessionMembers(sid, minStart) {
			if pid == except {
				continue
			}
			c, err := setThreadsNice(pid, nice)
			changed = changed || c
			if err != nil && firstErr == nil {
				firstErr = err
			}
		}
		if !changed {
			return firstErr
		}
	}
	return firstErr
}

// setThreadsNice sets nice on every thread of pid; it reports whether one was not set
// yet.
func setThreadsNice(pid, nice int) (changed bool, err error) {
	tids, rerr := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if rerr != nil {
		return false, nil // gone meanwhile
	}
	for _, t := range tids {
		tid, perr := strconv.Atoi(t.Name())
		if perr != nil {
			continue
		}
		// The raw getpriority answers 20 - nice.
		if p, gerr := syscall.Getpriority(syscall.PRIO_PROCESS, tid); gerr == nil && 20-p == nice {
			continue
		}
		changed = true
		if serr := syscall.Setpriority(syscall.PRIO_PROCESS, tid, nice); serr != nil && !errors.Is(serr, syscall.ESRCH) && err == nil {
			err = fmt.Errorf("set the nice value of thread %d of pid %d: %w", tid, pid, serr)
		}
	}
	return changed, err
}
