package vm

// Warm pools: VMs booted ahead of time to the point where the guest's supervisor
// waits for its identity, so that a create matching a pool's shape (image, cpus,
// memory, disk size; no GPU) is Ready as soon as the supervisor has its document and
// its session is up, instead of after a whole boot.
//
// A pool member is a sandbox directory like any other (sb/<hash of the member id>),
// with pool.json beside state.json naming the pool and, once claimed, the sandbox.
// Its runner boots the VM with no identity (runner.Spec.Pool) and holds the guest's
// bootstrap fetch open. A claim (Create) moves the member into the driver's sandboxes
// under the sandbox's id: pool.json and state.json get the sandbox's id, runner.json
// its full spec (so a later Start boots it as that sandbox), and the runner receives
// the identity over its control socket (runner.Claim). The directory keeps the
// member's name; adoption finds the sandbox by pool.json. A member is claimed once and
// never returns to a pool: Delete removes it like any sandbox.
//
// What is bound at boot, and why that is safe (see also runner/claim.go):
//   - state dir, disk and socket paths: named after the member id, never the sandbox's;
//   - vsock CID: allocated among all of the driver's VMs (members included), not
//     derived from any id;
//   - kernel command line, image disk, initramfs: the pool's shape only;
//   - hostname: none until the supervisor sets the sandbox's name from its document;
//   - sandbox id, name, token, CA, policy, environment, command, runner credential
//     (provider values), per-sandbox gateway socket, egress policy sync: late-bound
//     at the claim;
//   - guest memory, processes, files and the kernel's random state: the member's own
//     boot, which no other sandbox ever shares (used once, never recycled).
//
// The pools refill in the background, one VM at a time (boots compete for the same
// cores), and survive a driver or gateway restart: idle members are re-adopted from
// their directories like running sandboxes.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/vm/internal/runner"
	"github.com/openshell/openshell/drivers/vm/internal/state"
	"github.com/openshell/openshell/guest/channel/wire"
	"github.com/openshell/openshell/images"
	"github.com/openshell/openshell/internal/atomicfile"
	"github.com/openshell/openshell/internal/procstat"
	"github.com/openshell/openshell/supervisor/bootstrap"
)

// PoolFile marks a sandbox directory as a warm pool's VM.
const PoolFile = "pool.json"

// poolRecord is pool.json.
type poolRecord struct {
	Pool string `json:"pool"`
	// Key is the pool's shape when the member was booted: a member of a pool whose
	// config changed since is discarded on adoption.
	Key    string `json:"key"`
	Member string `json:"member"` // the member id the directory is named after
	// ClaimedBy is the sandbox that took the VM ("" = idle in its pool).
	ClaimedBy string    `json:"claimed_by,omitempty"`
	ClaimedAt time.Time `json:"claimed_at,omitzero"`
}

func readPoolRecord(dir string) (*poolRecord, error) {
	b, err := os.ReadFile(filepath.Join(dir, PoolFile))
	if err != nil {
		return nil, err
	}
	var r poolRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, PoolFile), err)
	}
	if r.Member == "" || state.ValidID(r.Member) != nil {
		return nil, fmt.Errorf("%s: bad member id %q", filepath.Join(dir, PoolFile), r.Member)
	}
	return &r, nil
}

func writePoolRecord(dir string, r *poolRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, PoolFile), b, 0o600)
}

// poolMember is one VM of a pool. Fields under pools.mu.
type poolMember struct {
	id, pool string
	paths    state.Paths
	cid      uint32

	runnerPID   int
	runnerStart uint64
	vmmPID      int
	waiting     bool          // the guest asked for its identity: claimable
	settled     bool          // and its warm-up is over (runner.Status.GuestSettled): idle
	ready       chan struct{} // closed when waiting turns true, or the member is gone
	gone        bool
	since       time.Time // when the runner was started (or adopted)

	monCancel context.CancelFunc
	monDone   chan struct{}
}

// pools keeps the warm pools of one driver.
type pools struct {
	d *Driver
	// conf are the pools of the driver's configuration (the gateway config): fixed
	// while the driver runs.
	conf map[string]PoolConfig

	// apiMu orders CreatePool and DeletePool (each writes pools.json).
	apiMu sync.Mutex

	mu sync.Mutex
	// api are the pools made through CreatePool, kept in pools.json (poolapi.go);
	// apiErr says why that file could not be read (nil: it could, or there is none).
	api     map[string]PoolConfig
	apiErr  error
	members map[string]*poolMember // by member id
	lastErr map[string]string      // pool → why its last VM did not come up
	retryAt map[string]time.Time   // pool → no new boot before (after a failure)
	fails   map[string]int         // pool → failures in a row
	claimed map[string]int         // pool → VMs handed out since the driver started
	booting string                 // the member bootMember is starting ("" = none)
	kick    chan struct{}
}

func newPools(d *Driver) *pools {
	p := &pools{d: d, conf: d.cfg.Pools, members: map[string]*poolMember{}, lastErr: map[string]string{},
		retryAt: map[string]time.Time{}, fails: map[string]int{}, claimed: map[string]int{}, kick: make(chan struct{}, 1)}
	p.api, p.apiErr = readAPIPools(d.cfg.StateDir)
	if p.apiErr != nil {
		d.log.Error("the pools made with `openshell pool create` are not served until this file is mended or removed", "err", p.apiErr)
	}
	for n := range p.api {
		if _, ok := p.conf[n]; ok {
			d.log.Warn("a pool of the gateway config has the name of one made with `openshell pool create`: the config's is served", "pool", n)
			delete(p.api, n)
		}
	}
	return p
}

// configLocked returns pool n's configuration (ok false: there is no such pool).
// p.mu held.
func (p *pools) configLocked(n string) (PoolConfig, bool) {
	if c, ok := p.conf[n]; ok {
		return c, true
	}
	c, ok := p.api[n]
	return c, ok
}

func (p *pools) config(n string) (PoolConfig, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.configLocked(n)
}

// namesLocked lists every pool, sorted. p.mu held.
func (p *pools) namesLocked() []string {
	names := make([]string, 0, len(p.conf)+len(p.api))
	for n := range p.conf {
		names = append(names, n)
	}
	for n := range p.api {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// poolKey fingerprints a pool's effective shape and boot files.
func (d *Driver) poolKey(res *resolved) string {
	h := sha256.Sum256([]byte(fmt.Sprintf("%s|%d|%d|%d|%s|%s|%s|%s", res.image, res.vcpus, res.memoryMiB, res.diskBytes,
		d.cfg.Kernel, d.cfg.Backend, d.cfg.Accel, d.cfg.Transport)))
	return hex.EncodeToString(h[:8])
}

// poolShape is the resolved create a pool serves.
func (d *Driver) poolShape(pc PoolConfig) (*resolved, error) {
	r := &resolved{image: pc.Image, vcpus: pc.CPUs, memoryMiB: pc.MemoryMiB}
	if r.image == "" {
		r.image = d.cfg.DefaultImage
	}
	if r.vcpus == 0 {
		r.vcpus = d.cfg.CPUs
	}
	if r.memoryMiB == 0 {
		r.memoryMiB = d.cfg.MemoryMiB
	}
	size := pc.DiskSize
	if size == "" {
		size = d.cfg.DiskSize
	}
	b, err := diskBytes(size)
	if err != nil {
		return nil, err
	}
	r.diskBytes = b
	return r, nil
}

// match returns the pool that serves res ("" = none).
func (p *pools) match(res *resolved) string {
	if res.gpu != nil {
		return ""
	}
	p.mu.Lock()
	names := p.namesLocked()
	cfgs := make([]PoolConfig, len(names))
	for i, n := range names {
		cfgs[i], _ = p.configLocked(n)
	}
	p.mu.Unlock()
	for i, n := range names {
		shape, err := p.d.poolShape(cfgs[i])
		if err != nil || cfgs[i].Size == 0 {
			continue
		}
		if shape.image == res.image && shape.vcpus == res.vcpus && shape.memoryMiB == res.memoryMiB && shape.diskBytes == res.diskBytes {
			return n
		}
	}
	return ""
}

// take removes a waiting member of pool from the pool (nil = none waiting). Once
// taken, a member never returns to the pool.
func (p *pools) take(pool string) *poolMember {
	p.mu.Lock()
	defer p.mu.Unlock()
	// The longest waiting of the settled ones; else of those still warming up.
	var best *poolMember
	for _, m := range p.members {
		if m.pool != pool || !m.waiting || m.gone {
			continue
		}
		if best == nil || (m.settled && !best.settled) || (m.settled == best.settled && m.since.Before(best.since)) {
			best = m
		}
	}
	if best != nil {
		delete(p.members, best.id)
		p.claimed[pool]++
	}
	return best
}

// cidsLocked adds the members' CIDs to used. d.mu held (lock order: d.mu, then p.mu).
func (p *pools) cidsLocked(used map[uint32]bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range p.members {
		used[m.cid] = true
	}
}

func (p *pools) wake() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// ---- claim ----

// refillDelay is how long after a claim its pool's refill starts. The refill's boot
// takes the host's CPU at normal priority until its VMM runs (the runner's start, the
// VMM's set-up: 100-300 ms of a core here), and the claimed guest's start-up, over
// within this under emulation, needs the CPU first.
const refillDelay = time.Second

// claim serves a create from a warm pool when one matches and has a waiting VM. It
// returns false (and no error) when the create must go the cold way; an error only
// when the create must fail.
func (d *Driver) claim(sb *computev1.DriverSandbox, res *resolved) (bool, error) {
	pool := d.pools.match(res)
	if pool == "" {
		return false, nil
	}
	id := sb.GetId()
	log := d.log.With("sandbox_id", id, "pool", pool)
	d.mu.Lock()
	_, exists := d.sandboxes[id]
	d.mu.Unlock()
	if exists {
		return false, fmt.Errorf("vm sandbox %q: %w", id, drivers.ErrAlreadyExists)
	}
	m := d.pools.take(pool)
	// Refill, whether this one is taken or none was waiting; not at once (refillDelay).
	time.AfterFunc(refillDelay, d.pools.wake)
	if m == nil {
		log.Info("warm pool has no waiting VM; creating cold")
		return false, nil
	}
	start := time.Now()
	d.pools.unwatch(m)
	s := &sandbox{id: id, name: sb.GetName(), paths: m.paths, cid: m.cid, pool: pool}
	s.setPhase(phaseBooting, drivers.ReasonStarting, "claimed a warm VM from pool "+pool)
	// The timeline of a claimed create: the driver's part up to here, then the claim
	// (until the runner took the identity); the runner adds the guest's bootstrap.
	s.steps = []wire.HostStep{{Phase: "driver", At: start.UTC()}}
	s.runnerPID, s.runnerStart, s.vmmPID = m.runnerPID, m.runnerStart, m.vmmPID
	d.mu.Lock()
	if _, ok := d.sandboxes[id]; ok {
		d.mu.Unlock()
		d.discardMember(m, "a sandbox of the same id appeared meanwhile")
		return false, fmt.Errorf("vm sandbox %q: %w", id, drivers.ErrAlreadyExists)
	}
	d.sandboxes[id] = s
	d.mu.Unlock()
	recorded, toldAt, err := d.handOver(s, m, sb)
	if err != nil {
		// The VM may have received part of an identity: it is never used again.
		log.Warn("claiming a warm VM failed; discarding it and creating cold", "member", m.id, "err", err)
		d.mu.Lock()
		delete(d.sandboxes, id)
		d.mu.Unlock()
		d.discardMemberAfter(m, "claim failed: "+err.Error(), recorded)
		return false, nil
	}
	// The guest starts when the runner is told, not when the records are written
	// (they go on alongside): the claim step ends there, and the guest's bootstrap
	// is timed from it.
	s.stampAt("claim", toldAt)
	log.Info("claimed a warm VM", "member", m.id, "runner_pid", m.runnerPID, "took", time.Since(start))
	d.emit(s)
	d.startMonitor(s, m.runnerPID, m.runnerStart)
	return true, nil
}

// handOver makes member m sandbox s: the pool record first (so a driver restarted
// midway never takes the VM for an idle member), then the identity to the runner and
// the sandbox's records (state, runner spec) at the same time. recorded waits for
// those record writes (nil error when none were started): a failed claim returns
// before they end, and the member's directory must not be removed until they have.
// toldAt is when the runner took the identity.
func (d *Driver) handOver(s *sandbox, m *poolMember, sb *computev1.DriverSandbox) (recorded func() error, toldAt time.Time, err error) {
	recorded = func() error { return nil }
	dir := m.paths.Dir
	if !state.SameProcess(m.runnerPID, m.runnerStart) {
		return recorded, toldAt, errors.New("its runner is gone")
	}
	// The runner reads the claim at normal priority, not at its pooled VM's (the
	// runner restores the rest, and retries this if the kernel refused it for now).
	if err := runner.RestorePoolPriority(m.runnerPID); err != nil {
		d.log.Debug("the pooled VM's runner stays at its pool priority until it takes the claim", "member", m.id, "err", err)
	}
	rs, err := runner.ReadSpec(dir)
	if err != nil {
		return recorded, toldAt, err
	}
	cache, err := images.NewCache(d.cfg.ImageCacheDir)
	if err != nil {
		return recorded, toldAt, err
	}
	entry, err := cache.Get(rs.ImageKey)
	if err != nil {
		return recorded, toldAt, fmt.Errorf("the pool's image: %w", err)
	}
	spec := sb.GetSpec()
	boot, err := d.bootstrapConfig(s, spec, entry, spec.GetGatewaySocketDir())
	if err != nil {
		return recorded, toldAt, err
	}
	egress, err := d.egressPolicy(s.id)
	if err != nil {
		return recorded, toldAt, err
	}
	cl := &runner.Claim{SandboxID: s.id, SandboxName: s.name, Bootstrap: *boot, Egress: egress, GatewaySocketDir: spec.GetGatewaySocketDir()}
	if err := cl.Validate(); err != nil {
		return recorded, toldAt, err
	}
	now := time.Now().UTC()
	pr, err := readPoolRecord(dir)
	if err != nil {
		return recorded, toldAt, err
	}
	pr.ClaimedBy, pr.ClaimedAt = s.id, now
	if err := writePoolRecord(dir, pr); err != nil {
		return recorded, toldAt, err
	}
	// From here on a restarted driver never pools this VM again (pool.json says it is
	// claimed). The runner gets the identity while the sandbox's own records are
	// written: the guest's start-up need not wait for their two fsyncs (~15 ms each on
	// a busy disk here). A record that fails fails the claim, and the VM is discarded.
	rs.SandboxID, rs.SandboxName, rs.Bootstrap, rs.Egress, rs.GatewaySocketDir, rs.Pool = s.id, s.name, *boot, egress, spec.GetGatewaySocketDir(), ""
	ctx, cancel := context.WithTimeout(d.ctx, 10*time.Second)
	defer cancel()
	return claimWhileRecording(ctx,
		func(ctx context.Context) error { return runner.NewClient(m.paths.ControlSocket).Claim(ctx, cl) },
		func() error {
			_, err := state.Update(dir, func(r *state.Record) error {
				r.SandboxID, r.SandboxName, r.SpecDigest, r.CreatedAt = s.id, s.name, specDigest(spec), now
				return nil
			})
			if err == nil {
				err = runner.WriteSpec(dir, rs)
			}
			return err
		})
}

// claimWhileRecording tells the runner (tell) while the records are written (record,
// in the background). A claim the runner refused is returned at once: the create then
// falls back to a cold boot without first waiting for the records of a VM that is
// discarded anyway. Otherwise it returns when both are done, with the records' error
// (a claimed VM whose records failed is not a sandbox a restarted driver could find).
// recorded waits for record and returns its error, once or more; toldAt is when tell
// returned.
func claimWhileRecording(ctx context.Context, tell func(context.Context) error, record func() error) (recorded func() error, toldAt time.Time, err error) {
	done := make(chan struct{})
	var recErr error
	go func() {
		defer close(done)
		recErr = record()
	}()
	recorded = func() error { <-done; return recErr }
	err = tell(ctx)
	toldAt = time.Now()
	if err != nil {
		return recorded, toldAt, err
	}
	return recorded, toldAt, recorded()
}

// discardMember ends a member's VM and removes its directory.
func (d *Driver) discardMember(m *poolMember, why string) {
	d.discardMemberAfter(m, why, nil)
}

// discardMemberAfter is discardMember that removes the directory only once before
// (nil = nothing) returned: writes still under way in it (a failed claim's records)
// would otherwise leave files behind in a directory being removed.
func (d *Driver) discardMemberAfter(m *poolMember, why string, before func() error) {
	d.log.Info("discarding a warm pool VM", "pool", m.pool, "member", m.id, "why", why)
	s := &sandbox{id: m.id, paths: m.paths}
	if state.SameProcess(m.runnerPID, m.runnerStart) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		runner.NewClient(m.paths.ControlSocket).Kill(ctx)
		cancel()
	}
	d.killLeftovers(s)
	if before != nil {
		_ = before() // its failure is the claim's, logged by the caller
	}
	removeDir(m.paths.Dir)
	if run := state.RunDir(m.paths.Dir); run != m.paths.Dir {
		removeDir(run)
	}
}

// ---- fill ----

// startPools starts the refill loop (after adoption); it idles while there are no
// pools (CreatePool wakes it).
func (d *Driver) startPools() {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.fillLoop()
	}()
}

func (d *Driver) fillLoop() {
	p := d.pools
	for {
		pool, wait := p.next()
		if pool != "" {
			d.bootMember(pool)
			continue
		}
		select {
		case <-d.ctx.Done():
			return
		case <-p.kick:
		case <-time.After(wait):
		}
	}
}

// next picks the pool that lacks a VM most (none: how long to wait at most).
func (p *pools) next() (string, time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	best, bestLack, wait := "", 0, 30*time.Second
	now := time.Now()
	for _, n := range p.namesLocked() {
		pc, _ := p.configLocked(n)
		have := 0
		for _, m := range p.members {
			if m.pool == n && !m.gone {
				have++
			}
		}
		lack := pc.Size - have
		if lack <= 0 {
			continue
		}
		if at := p.retryAt[n]; now.Before(at) {
			wait = min(wait, at.Sub(now))
			continue
		}
		if lack > bestLack {
			best, bestLack = n, lack
		}
	}
	return best, wait
}

// failed records why a pool's VM did not come up and backs off.
func (p *pools) failed(pool, why string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lastErr[pool] = why
	p.fails[pool]++
	back := min(time.Duration(1<<min(p.fails[pool], 6))*time.Second, time.Minute)
	p.retryAt[pool] = time.Now().Add(back)
}

// memberBootTimeout bounds a pool VM's boot to its waiting guest.
var memberBootTimeout = 3 * time.Minute

// bootMember boots one VM for pool and waits until its guest waits for its identity
// (or it failed): one boot at a time.
func (d *Driver) bootMember(pool string) {
	p := d.pools
	log := d.log.With("pool", pool)
	pc, ok := p.config(pool)
	if !ok {
		return // deleted since next() picked it
	}
	res, err := d.poolShape(pc)
	if err != nil {
		p.failed(pool, err.Error())
		return
	}
	var rnd [4]byte
	rand.Read(rnd[:])
	id := "pool-" + pool + "-" + hex.EncodeToString(rnd[:])
	dir := d.sandboxDir(id)
	if err := os.Mkdir(dir, 0o700); err != nil {
		p.failed(pool, err.Error())
		return
	}
	m := &poolMember{id: id, pool: pool, paths: state.PathsFor(dir), ready: make(chan struct{}), since: time.Now()}
	d.mu.Lock()
	m.cid = d.freeCIDLocked()
	p.mu.Lock()
	p.members[id] = m // counted (and its CID reserved) while it boots
	p.booting = id
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.booting = ""
		p.mu.Unlock()
	}()
	d.mu.Unlock()
	fail := func(err error) {
		log.Error("warm pool VM did not come up", "member", id, "err", err)
		p.mu.Lock()
		delete(p.members, id)
		p.mu.Unlock()
		if d.ctx.Err() == nil {
			p.failed(pool, err.Error())
			d.discardMember(m, err.Error())
		}
	}
	// pool.json first: a directory with a state record but without it would be
	// adopted as a sandbox.
	if err := writePoolRecord(dir, &poolRecord{Pool: pool, Key: d.poolKey(res), Member: id}); err != nil {
		fail(err)
		return
	}
	rec := &state.Record{SandboxID: id, SandboxName: id, CreatedAt: time.Now().UTC(), Image: res.image, CID: m.cid,
		VCPUs: res.vcpus, MemoryMiB: res.memoryMiB, Paths: m.paths, BootID: d.bootID}
	if err := state.Create(rec); err != nil {
		fail(err)
		return
	}
	log.Info("booting a warm pool VM", "member", id, "image", res.image, "vcpus", res.vcpus, "memory_mib", res.memoryMiB)
	tmp := &sandbox{id: id, name: id, paths: m.paths, cid: m.cid}
	rs, err := d.prepare(d.ctx, tmp, res, &computev1.DriverSandboxSpec{}, func(string) {})
	if err != nil {
		fail(fmt.Errorf("pools.%s: %w", pool, err))
		return
	}
	// Nothing of any sandbox: the identity comes with the claim.
	rs.Bootstrap, rs.GatewaySocketDir, rs.Pool = bootstrap.Config{}, "", pool
	rs.Egress.RunnerCredential = ""
	if err := runner.WriteSpec(dir, rs); err != nil {
		fail(err)
		return
	}
	pid, start, err := d.spawnRunner(m.paths)
	if err != nil {
		fail(err)
		return
	}
	p.mu.Lock()
	m.runnerPID, m.runnerStart, m.since = pid, start, time.Now()
	p.mu.Unlock()
	d.watchMember(m)
	select {
	case <-m.ready:
	case <-d.ctx.Done():
		return
	case <-time.After(memberBootTimeout):
		p.mu.Lock()
		delete(p.members, id)
		p.mu.Unlock()
		p.unwatch(m)
		fail(fmt.Errorf("the guest did not ask for its identity within %v; see %s", memberBootTimeout, m.paths.ConsoleLog))
		return
	}
	p.mu.Lock()
	waiting := m.waiting
	if waiting {
		p.fails[pool] = 0
		delete(p.lastErr, pool)
	}
	_, still := p.configLocked(pool)
	_, member := p.members[id]
	if !still && member {
		delete(p.members, id)
	}
	p.mu.Unlock()
	if !still && member {
		// DeletePool left this boot to end here.
		d.stopMember(m, "its pool was deleted")
		return
	}
	if waiting {
		log.Info("warm pool VM waiting for a sandbox", "member", id, "took", time.Since(rec.CreatedAt))
	}
}

// stopMember discards a member already taken out of p.members: its runner's watch
// ends first, so the runner's end is not taken for a failure.
func (d *Driver) stopMember(m *poolMember, why string) {
	d.pools.unwatch(m)
	d.discardMember(m, why)
}

// unwatch ends the watch of member m's runner (watchMember), if one runs, and waits
// until it has returned.
func (p *pools) unwatch(m *poolMember) {
	p.mu.Lock()
	cancel, done := m.monCancel, m.monDone
	p.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// runnerCommand is the command that starts the runner of the VM in paths, in its own
// session: no signal from the driver's or gateway's terminal or process group reaches
// it, and it outlives both. Its output goes to the runner log; closeLog closes the
// driver's copy of that file once the command started (or will not).
func (d *Driver) runnerCommand(paths state.Paths) (cmd *exec.Cmd, closeLog func(), err error) {
	logf, err := os.OpenFile(paths.RunnerLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("open runner log: %w", err)
	}
	argv := append(append([]string{}, d.cfg.RunnerCommand...), "--state-dir", paths.Dir)
	cmd = exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), d.cfg.RunnerEnv...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = paths.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	return cmd, func() { logf.Close() }, nil
}

// spawnRunner starts a pool member's runner.
func (d *Driver) spawnRunner(paths state.Paths) (int, uint64, error) {
	cmd, closeLog, err := d.runnerCommand(paths)
	if err != nil {
		return 0, 0, err
	}
	defer closeLog()
	if err := cmd.Start(); err != nil {
		return 0, 0, fmt.Errorf("start runner %v: %w", cmd.Args, err)
	}
	pid := cmd.Process.Pid
	start, _ := state.ProcStartTime(pid)
	go cmd.Wait() // reap it if it ends while the driver lives
	return pid, start, nil
}

// watchMember follows a member's runner until it is claimed (cancelled) or gone.
func (d *Driver) watchMember(m *poolMember) {
	ctx, cancel := context.WithCancel(d.ctx)
	done := make(chan struct{})
	d.pools.mu.Lock()
	m.monCancel, m.monDone = cancel, done
	pid, start := m.runnerPID, m.runnerStart
	d.pools.mu.Unlock()
	p := d.pools
	var readyOnce sync.Once
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer close(done)
		defer cancel()
		cl := runner.NewClient(m.paths.ControlSocket)
		for {
			err := cl.Watch(ctx, func(st runner.Status) {
				p.mu.Lock()
				if st.VMMPID != 0 {
					m.vmmPID = st.VMMPID
				}
				if st.GuestWaiting && !m.waiting {
					m.waiting = true
					readyOnce.Do(func() { close(m.ready) })
				}
				m.settled = m.waiting && st.GuestSettled
				p.mu.Unlock()
			})
			if ctx.Err() != nil {
				return
			}
			if err == nil || !state.SameProcess(pid, start) {
				break
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
		// The runner ended while idle: the VM is gone; never reuse its directory.
		p.mu.Lock()
		m.gone = true
		_, still := p.members[m.id]
		delete(p.members, m.id)
		p.mu.Unlock()
		readyOnce.Do(func() { close(m.ready) })
		if !still {
			return
		}
		why := "the pool VM's runner ended"
		if ts, _ := state.ReadTombstone(m.paths.Dir); ts != nil {
			why = ts.Reason + ": " + ts.Message
			if ts.ConsoleTail != "" {
				why += "\nconsole tail:\n" + ts.ConsoleTail
			}
		}
		p.failed(m.pool, why)
		d.discardMember(m, why)
		p.wake()
	}()
}

// ---- adoption ----

// adoptMember takes an idle member found on disk back into its pool, or removes it
// (its pool is gone or changed, its runner is dead, the host rebooted).
func (d *Driver) adoptMember(dir string, rec *state.Record, pr *poolRecord) {
	m := &poolMember{id: pr.Member, pool: pr.Pool, paths: state.PathsFor(dir), cid: rec.CID, ready: make(chan struct{}),
		runnerPID: rec.RunnerPID, runnerStart: rec.RunnerStart, vmmPID: rec.VMMPID, since: rec.CreatedAt}
	pc, ok := d.pools.config(pr.Pool)
	why := ""
	switch {
	case pr.ClaimedBy != "":
		why = "the driver stopped while the VM was being claimed; the sandbox was never told it exists"
	case !ok || pc.Size == 0:
		why = "its pool is no longer configured"
	case hostRebooted(rec, d.bootID) || rec.RunnerPID == 0 || !state.SameProcess(rec.RunnerPID, rec.RunnerStart):
		why = "its runner is gone"
	default:
		if res, err := d.poolShape(pc); err != nil || d.poolKey(res) != pr.Key {
			why = "its pool's configuration changed"
		}
	}
	if why != "" {
		d.discardMember(m, why)
		return
	}
	d.pools.mu.Lock()
	d.pools.members[m.id] = m
	d.pools.mu.Unlock()
	d.log.Info("re-adopted a warm pool VM", "pool", m.pool, "member", m.id, "runner_pid", m.runnerPID)
	d.watchMember(m)
}

// ---- reporting ----

// PoolStatus is one warm pool as doctor and metrics show it.
type PoolStatus struct {
	Name string `json:"name"`
	// Source is where the pool is defined: PoolSourceConfig or PoolSourceAPI.
	Source    string `json:"source,omitempty"`
	Size      int    `json:"size"`    // configured
	Idle      int    `json:"idle"`    // VMs whose guest waits for an identity, its warm-up over
	Booting   int    `json:"booting"` // VMs still booting or warming up (a claim may take one warming up)
	Claimed   int    `json:"claimed"` // VMs handed to sandboxes since the driver started
	Image     string `json:"image"`
	VCPUs     int    `json:"vcpus"`
	MemoryMiB int    `json:"memory_mib"`
	DiskBytes int64  `json:"disk_bytes,omitempty"`
	// IdleRSSBytes is the host memory (resident set) of each idle VM: its VMM, runner
	// and the rest of the runner's session (vsock backend).
	IdleRSSBytes []int64 `json:"idle_rss_bytes,omitempty"`
	LastError    string  `json:"last_error,omitempty"`
}

// Pools reports the warm pools.
func (d *Driver) Pools() []PoolStatus {
	p := d.pools
	p.mu.Lock()
	defer p.mu.Unlock()
	names := p.namesLocked()
	out := make([]PoolStatus, 0, len(names))
	for _, n := range names {
		pc, _ := p.configLocked(n)
		ps := PoolStatus{Name: n, Size: pc.Size, Claimed: p.claimed[n], LastError: p.lastErr[n], Source: PoolSourceConfig}
		if _, fromAPI := p.api[n]; fromAPI {
			ps.Source = PoolSourceAPI
		}
		if res, err := d.poolShape(pc); err == nil {
			ps.Image, ps.VCPUs, ps.MemoryMiB, ps.DiskBytes = res.image, res.vcpus, res.memoryMiB, res.diskBytes
		}
		for _, m := range p.members {
			if m.pool != n || m.gone {
				continue
			}
			if m.settled {
				ps.Idle++
				ps.IdleRSSBytes = append(ps.IdleRSSBytes, sessionRSS(m.runnerPID, m.runnerStart, m.vmmPID))
			} else {
				ps.Booting++
			}
		}
		out = append(out, ps)
	}
	return out
}

// sessionRSS is the resident memory of a runner's session (runner, VMM, vsock
// backend) in bytes.
func sessionRSS(runnerPID int, runnerStart uint64, vmmPID int) int64 {
	pids := procstat.SessionMembers(runnerPID, runnerStart)
	seen := map[int]bool{}
	var total int64
	for _, pid := range append(pids, vmmPID) {
		if pid == 0 || seen[pid] {
			continue
		}
		seen[pid] = true
		total += processRSS(pid)
	}
	return total
}

// processRSS reads VmRSS of pid from /proc (0 when gone).
func processRSS(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) >= 1 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// finishClaim hands a claimed VM its identity again when the driver stopped between
// recording the claim and telling the runner (its runner still reports pooled):
// runner.json already holds the sandbox's spec.
func (d *Driver) finishClaim(id string) {
	s, err := d.lookup(id)
	if err != nil || !d.runnerAlive(s) {
		return
	}
	ctx, cancel := context.WithTimeout(d.ctx, 5*time.Second)
	defer cancel()
	cl := runner.NewClient(s.paths.ControlSocket)
	st, err := cl.Status(ctx)
	if err != nil || st.State != runner.StatePooled {
		return
	}
	rs, err := runner.ReadSpec(s.paths.Dir)
	if err != nil || rs.SandboxID != id {
		return
	}
	d.log.Info("finishing an interrupted claim of a warm VM", "sandbox_id", id)
	if err := cl.Claim(ctx, &runner.Claim{SandboxID: rs.SandboxID, SandboxName: rs.SandboxName, Bootstrap: rs.Bootstrap, Egress: rs.Egress, GatewaySocketDir: rs.GatewaySocketDir}); err != nil {
		d.log.Warn("finish the claim", "sandbox_id", id, "err", err)
	}
}

// PoolsOnDisk reports the warm pools' VMs found in a driver state directory, for
// doctor (which runs apart from the driver): each idle member's runner is asked
// whether its guest waits, and its host memory is read from /proc. cfg gives the
// configured sizes (nil: sizes unknown, 0); the pools made through the API are read
// from the state directory's pools.json.
func PoolsOnDisk(ctx context.Context, stateDir string, cfg map[string]PoolConfig) []PoolStatus {
	all := map[string]PoolConfig{}
	source := map[string]string{}
	api, _ := readAPIPools(stateDir)
	for n, c := range api {
		all[n], source[n] = c, PoolSourceAPI
	}
	for n, c := range cfg {
		all[n], source[n] = c, PoolSourceConfig
	}
	byName := map[string]*PoolStatus{}
	get := func(n string) *PoolStatus {
		if byName[n] == nil {
			c := all[n]
			byName[n] = &PoolStatus{Name: n, Source: source[n], Size: c.Size, Image: c.Image, VCPUs: c.CPUs, MemoryMiB: c.MemoryMiB}
		}
		return byName[n]
	}
	for n := range all {
		get(n)
	}
	root := filepath.Join(stateDir, "sb")
	ents, _ := os.ReadDir(root)
	for _, e := range ents {
		dir := filepath.Join(root, e.Name())
		pr, err := readPoolRecord(dir)
		if err != nil || pr.ClaimedBy != "" {
			continue
		}
		rec, err := state.Load(dir)
		if err != nil || rec.RunnerPID == 0 || !state.SameProcess(rec.RunnerPID, rec.RunnerStart) {
			continue
		}
		ps := get(pr.Pool)
		if ps.Image == "" {
			ps.Image, ps.VCPUs, ps.MemoryMiB = rec.Image, rec.VCPUs, rec.MemoryMiB
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := runner.NewClient(state.PathsFor(dir).ControlSocket).Status(sctx)
		cancel()
		if err == nil && st.GuestSettled && st.State == runner.StatePooled {
			ps.Idle++
			ps.IdleRSSBytes = append(ps.IdleRSSBytes, sessionRSS(rec.RunnerPID, rec.RunnerStart, rec.VMMPID))
		} else {
			ps.Booting++
		}
	}
	out := make([]PoolStatus, 0, len(byName))
	for _, ps := range byName {
		out = append(out, *ps)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
