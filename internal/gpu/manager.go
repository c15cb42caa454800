package gpu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/gofrs/flock"

	"github.com/openshell/openshell/internal/atomicfile"
)

// DefaultStateDir holds the host-wide lock and the journal of devices moved to
// vfio-pci. It must survive a reboot: the journal says where each device came from.
const DefaultStateDir = "/var/lib/openshell/gpu"

// Errors callers map to their own codes.
var (
	// ErrInvalid: the request names no GPU of this host, or asks for none.
	ErrInvalid = errors.New("invalid GPU request")
	// ErrUnavailable: valid, but not satisfiable now (too few free GPUs, limit reached,
	// no IOMMU).
	ErrUnavailable = errors.New("GPUs unavailable")
)

// Config locates the host's sysfs and the manager's state.
type Config struct {
	Sysfs    string // default /sys
	Proc     string // default /proc
	StateDir string // default DefaultStateDir
	// Write performs one sysfs write (driver_override, bind, unbind). nil = the real
	// write to an existing file. Tests stand in for the kernel here, and only here.
	Write func(path string, data []byte) error
	// Scope tells apart the users of one host's journal (a VM driver's state dir):
	// Release and Recover touch only entries of their own scope, so two drivers on
	// one host never put back each other's devices.
	Scope string
	Log   *slog.Logger
}

// Manager hands out GPUs to sandboxes exclusively across every process of the host.
type Manager struct {
	cfg Config
	fs  sysfs
	// afterStep runs after each sysfs step of a bind (tests crash the process there).
	afterStep func(bdf, step string)
}

// New returns a manager; nothing is read or written until it is used.
func New(cfg Config) *Manager {
	if cfg.Sysfs == "" {
		cfg.Sysfs = DefaultSysfs
	}
	if cfg.Proc == "" {
		cfg.Proc = DefaultProc
	}
	if cfg.StateDir == "" {
		cfg.StateDir = DefaultStateDir
	}
	if cfg.Write == nil {
		cfg.Write = writeSysfs
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Manager{cfg: cfg, fs: sysfs{root: cfg.Sysfs}}
}

// writeSysfs writes to an existing sysfs attribute; it never creates a file.
func writeSysfs(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	return errors.Join(werr, f.Close())
}

// Request asks for GPUs: Devices (exact addresses) when given, else Count of any.
type Request struct {
	Count   int
	Devices []string
	// MaxSandboxes caps how many sandboxes of the host hold GPUs at once (0 = no cap).
	MaxSandboxes int
}

// Device is one PCI function given to a VM.
type Device struct {
	BDF string `json:"bdf"`
	// GPU is false for the other functions of a GPU's slot (its audio function).
	GPU    bool   `json:"gpu"`
	MMIO64 uint64 `json:"mmio64,omitempty"`
	// Driver is the host driver the function returns to when released.
	Driver string `json:"driver,omitempty"`
}

// Allocation is what a sandbox holds.
type Allocation struct {
	Owner   string   `json:"owner"`
	Devices []Device `json:"devices"`
}

// GPUs are the GPU functions of the allocation.
func (a *Allocation) GPUs() []string {
	var out []string
	for _, d := range a.Devices {
		if d.GPU {
			out = append(out, d.BDF)
		}
	}
	return out
}

// BDFs are every function, in the order they go to the VM.
func (a *Allocation) BDFs() []string {
	out := make([]string, len(a.Devices))
	for i, d := range a.Devices {
		out[i] = d.BDF
	}
	return out
}

// journal states of an entry.
const (
	stateBinding = "binding" // being moved to vfio-pci (or moved, not yet confirmed)
	stateBound   = "bound"
)

// entry is one function moved (or being moved) away from its host driver. It is
// written before the first sysfs write for that function.
type entry struct {
	BDF      string    `json:"bdf"`
	Owner    string    `json:"owner"`
	Scope    string    `json:"scope,omitempty"`
	Driver   string    `json:"driver"`             // original driver ("" = none)
	Override string    `json:"override,omitempty"` // original driver_override
	State    string    `json:"state"`
	GPU      bool      `json:"gpu"`
	MMIO64   uint64    `json:"mmio64,omitempty"`
	Since    time.Time `json:"since"`
}

type journal struct {
	Version int     `json:"version"`
	Entries []entry `json:"entries"`
}

func (m *Manager) journalPath() string { return filepath.Join(m.cfg.StateDir, "journal.json") }

// journaled: a journal exists, so some device may be away from its driver. Without
// one, Release and Recover have nothing to do and create nothing.
func (m *Manager) journaled() bool {
	_, err := os.Stat(m.journalPath())
	return err == nil
}

// ParseJournal reads a journal document; an unknown version or a bad address is an
// error (the journal decides what is written to sysfs).
func ParseJournal(b []byte) (*journal, error) {
	var j journal
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, fmt.Errorf("GPU journal: %w", err)
	}
	if j.Version != 1 {
		return nil, fmt.Errorf("GPU journal: version %d, want 1", j.Version)
	}
	for i, e := range j.Entries {
		if !bdfRE.MatchString(e.BDF) {
			return nil, fmt.Errorf("GPU journal: entries[%d].bdf %q is not a PCI address", i, e.BDF)
		}
		if e.Owner == "" {
			return nil, fmt.Errorf("GPU journal: entries[%d].owner is empty", i)
		}
		if strings.ContainsAny(e.Driver, "/\x00") || e.Driver == "." || e.Driver == ".." {
			return nil, fmt.Errorf("GPU journal: entries[%d].driver %q is not a driver name", i, e.Driver)
		}
		if e.State != stateBinding && e.State != stateBound {
			return nil, fmt.Errorf("GPU journal: entries[%d].state %q: want binding or bound", i, e.State)
		}
	}
	return &j, nil
}

func (m *Manager) readJournal() (*journal, error) {
	b, err := os.ReadFile(m.journalPath())
	if errors.Is(err, fs.ErrNotExist) {
		return &journal{Version: 1}, nil
	}
	if err != nil {
		return nil, err
	}
	j, err := ParseJournal(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (move it aside only after putting the devices it lists back on their drivers)", m.journalPath(), err)
	}
	return j, nil
}

func (m *Manager) writeJournal(j *journal) error {
	j.Version = 1
	b, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return err
	}
	// Atomic and durable: a crash leaves the old or the new journal, never a torn one.
	return atomicfile.WriteFile(m.journalPath(), append(b, '\n'), 0o600)
}

// lock takes the host-wide lock (a flock on a file in the state dir), waiting until ctx ends.
func (m *Manager) lock(ctx context.Context) (func(), error) {
	if err := os.MkdirAll(m.cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("GPU state dir: %w", err)
	}
	l := flock.New(filepath.Join(m.cfg.StateDir, "lock"))
	ok, err := l.TryLockContext(ctx, 20*time.Millisecond)
	if err != nil {
		return nil, fmt.Errorf("GPU lock %s: %w", l.Path(), err)
	}
	if !ok {
		return nil, fmt.Errorf("GPU lock %s: not acquired", l.Path())
	}
	return func() { l.Unlock() }, nil
}

// held maps each journaled function to its owner.
func held(j *journal) map[string]string {
	out := map[string]string{}
	for _, e := range j.Entries {
		out[e.BDF] = e.Owner
	}
	return out
}

// Inventory scans the host and marks what sandboxes hold. It only reads.
func (m *Manager) Inventory() (*Inventory, error) {
	j, err := m.readJournal()
	if err != nil {
		return nil, err
	}
	return Scan(ScanOptions{Sysfs: m.cfg.Sysfs, Proc: m.cfg.Proc, Held: held(j)})
}

// Held is owner's allocation, if it holds GPUs.
func (m *Manager) Held(owner string) (*Allocation, bool, error) {
	j, err := m.readJournal()
	if err != nil {
		return nil, false, err
	}
	a := m.allocationOf(j, owner)
	return a, a != nil, nil
}

// mine: the entry is owner's within this manager's scope.
func (m *Manager) mine(e entry, owner string) bool { return e.Owner == owner && e.Scope == m.cfg.Scope }

func (m *Manager) allocationOf(j *journal, owner string) *Allocation {
	var a *Allocation
	for _, e := range j.Entries {
		if m.mine(e, owner) && e.State == stateBound {
			if a == nil {
				a = &Allocation{Owner: owner}
			}
			a.Devices = append(a.Devices, Device{BDF: e.BDF, GPU: e.GPU, MMIO64: e.MMIO64, Driver: e.Driver})
		}
	}
	return a
}

// CheckRequest validates a request's shape (not whether the host can satisfy it).
func CheckRequest(r Request) error {
	if len(r.Devices) == 0 && r.Count < 1 {
		return fmt.Errorf("gpu count %d: ask for at least 1 GPU: %w", r.Count, ErrInvalid)
	}
	seen := map[string]bool{}
	for i, d := range r.Devices {
		b, err := ParseBDF(d)
		if err != nil {
			return fmt.Errorf("gpu device [%d]: %w: %w", i, err, ErrInvalid)
		}
		if seen[b] {
			return fmt.Errorf("gpu device %s is listed twice: %w", b, ErrInvalid)
		}
		seen[b] = true
	}
	if len(r.Devices) > 0 && r.Count > 0 && r.Count != len(r.Devices) {
		return fmt.Errorf("gpu count %d but %d gpu devices named: give one or make them agree: %w", r.Count, len(r.Devices), ErrInvalid)
	}
	return nil
}

// Allocate gives owner the GPUs it asks for, each moved (with the other functions of
// its slot) to vfio-pci. It is exclusive across every process of the host. On any
// failure every function already moved goes back to its driver and nothing is held.
// Asking again for an owner that already holds GPUs returns what it holds.
func (m *Manager) Allocate(ctx context.Context, owner string, r Request) (_ *Allocation, retErr error) {
	if owner == "" {
		return nil, fmt.Errorf("GPU allocation: owner is empty: %w", ErrInvalid)
	}
	if err := CheckRequest(r); err != nil {
		return nil, err
	}
	unlock, err := m.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	j, err := m.readJournal()
	if err != nil {
		return nil, err
	}
	// A half-finished allocation of this owner (a crash) is undone first.
	if err := m.restoreWhere(j, func(e entry) bool { return m.mine(e, owner) && e.State == stateBinding }); err != nil {
		return nil, err
	}
	if a := m.allocationOf(j, owner); a != nil {
		return a, nil
	}
	if r.MaxSandboxes > 0 {
		var owners []string
		for _, e := range j.Entries {
			if o := e.Scope + "\x00" + e.Owner; !slices.Contains(owners, o) {
				owners = append(owners, o)
			}
		}
		for i, o := range owners {
			_, owners[i], _ = strings.Cut(o, "\x00")
		}
		if len(owners) >= r.MaxSandboxes {
			return nil, fmt.Errorf("the host's limit of %d GPU sandboxes is reached (held by %s): delete one of them or raise the limit (gpu_max_sandboxes): %w",
				r.MaxSandboxes, strings.Join(owners, ", "), ErrUnavailable)
		}
	}
	inv, err := Scan(ScanOptions{Sysfs: m.cfg.Sysfs, Proc: m.cfg.Proc, Held: held(j)})
	if err != nil {
		return nil, err
	}
	picked, err := pick(inv, r)
	if err != nil {
		return nil, err
	}
	if !inv.VFIO {
		return nil, fmt.Errorf("the vfio-pci driver is not loaded (%s has no bus/pci/drivers/vfio-pci): run `modprobe vfio-pci`: %w", m.cfg.Sysfs, ErrUnavailable)
	}
	var fns []Function
	for _, g := range picked {
		fns = append(fns, g.Function)
		for _, mb := range g.Members {
			if mb.Role == "function" {
				f, err := m.fs.function(mb.BDF)
				if err != nil {
					return nil, err
				}
				fns = append(fns, f)
			}
		}
	}
	defer func() {
		if retErr != nil {
			rerr := m.restoreWhere(j, func(e entry) bool { return m.mine(e, owner) })
			if rerr != nil {
				retErr = errors.Join(retErr, fmt.Errorf("putting the devices back: %w", rerr))
			}
		}
	}()
	now := time.Now().UTC()
	for _, f := range fns {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		j.Entries = append(j.Entries, entry{BDF: f.BDF, Owner: owner, Scope: m.cfg.Scope, Driver: f.Driver, Override: f.Override,
			State: stateBinding, GPU: f.IsGPU(), MMIO64: f.MMIO64(), Since: now})
		if err := m.writeJournal(j); err != nil {
			return nil, fmt.Errorf("GPU journal: %w", err)
		}
		if err := m.bindVFIO(f); err != nil {
			return nil, err
		}
	}
	for i := range j.Entries {
		if j.Entries[i].Owner == owner {
			j.Entries[i].State = stateBound
		}
	}
	if err := m.writeJournal(j); err != nil {
		return nil, fmt.Errorf("GPU journal: %w", err)
	}
	a := m.allocationOf(j, owner)
	m.cfg.Log.Info("GPUs allocated", "owner", owner, "devices", a.BDFs())
	return a, nil
}

// pick chooses the GPUs for r among the inventory's, or says why it cannot.
func pick(inv *Inventory, r Request) ([]GPU, error) {
	if len(r.Devices) > 0 {
		var out []GPU
		for _, d := range r.Devices {
			b, _ := ParseBDF(d)
			g, ok := inv.Find(b)
			if !ok {
				return nil, notAGPU(inv.Sysfs, b)
			}
			if !g.Passthrough {
				return nil, fmt.Errorf("gpu device %s cannot be passed through: %s: %w", b, g.Reasons[0], ErrUnavailable)
			}
			out = append(out, *g)
		}
		return out, nil
	}
	var free []GPU
	var why []string
	for _, g := range inv.GPUs {
		if g.Passthrough {
			free = append(free, g)
		} else {
			why = append(why, g.BDF+": "+g.Reasons[0].String())
		}
	}
	if len(free) >= r.Count {
		// Keep a sandbox's GPUs on one NUMA node when the host allows it.
		slices.SortStableFunc(free, func(a, b GPU) int { return a.NUMANode - b.NUMANode })
		return free[:r.Count], nil
	}
	msg := fmt.Sprintf("gpu count %d: this host has %d GPU(s), %d free for passthrough", r.Count, len(inv.GPUs), len(free))
	if len(why) > 0 {
		msg += " (" + strings.Join(why, "; ") + ")"
	}
	return nil, fmt.Errorf("%s: %w", msg, ErrUnavailable)
}

// bindVFIO moves one function to vfio-pci: driver_override, unbind, bind.
func (m *Manager) bindVFIO(f Function) error {
	if f.Driver == VFIODriver {
		return nil // already there (bound at boot by the administrator); it stays there
	}
	step := func(path, data, what string) error {
		if err := m.cfg.Write(path, []byte(data)); err != nil {
			return fmt.Errorf("%s %s (write %q to %s): %w", what, f.BDF, strings.TrimSpace(data), path, err)
		}
		if m.afterStep != nil {
			m.afterStep(f.BDF, what)
		}
		return nil
	}
	if err := step(filepath.Join(m.fs.devDir(f.BDF), "driver_override"), VFIODriver, "set driver_override of"); err != nil {
		return err
	}
	if f.Driver != "" {
		if err := step(filepath.Join(m.fs.driverDir(f.Driver), "unbind"), f.BDF, "unbind "+f.Driver+" from"); err != nil {
			return err
		}
	}
	if err := step(filepath.Join(m.fs.driverDir(VFIODriver), "bind"), f.BDF, "bind vfio-pci to"); err != nil {
		return err
	}
	if cur := linkBase(filepath.Join(m.fs.devDir(f.BDF), "driver")); cur != VFIODriver {
		return fmt.Errorf("bind vfio-pci to %s: the device is on %q afterwards", f.BDF, cur)
	}
	return nil
}

// restore puts one journaled function back on its original driver.
func (m *Manager) restore(e entry) error {
	dev := m.fs.devDir(e.BDF)
	if _, err := os.Stat(dev); errors.Is(err, fs.ErrNotExist) {
		m.cfg.Log.Warn("GPU function gone from the host; dropping it from the journal", "bdf", e.BDF, "owner", e.Owner)
		return nil
	}
	if e.Driver == VFIODriver {
		return nil
	}
	cur := linkBase(filepath.Join(dev, "driver"))
	override := e.Override
	if override == "" {
		override = "\n" // an empty write clears driver_override
	}
	if cur != e.Driver && cur != "" {
		if err := m.cfg.Write(filepath.Join(m.fs.driverDir(cur), "unbind"), []byte(e.BDF)); err != nil {
			return fmt.Errorf("unbind %s from %s: %w", cur, e.BDF, err)
		}
	}
	if err := m.cfg.Write(filepath.Join(dev, "driver_override"), []byte(override)); err != nil {
		return fmt.Errorf("reset driver_override of %s: %w", e.BDF, err)
	}
	if e.Driver != "" && linkBase(filepath.Join(dev, "driver")) != e.Driver {
		if err := m.cfg.Write(filepath.Join(m.fs.driverDir(e.Driver), "bind"), []byte(e.BDF)); err != nil {
			return fmt.Errorf("bind %s back to %s: %w", e.BDF, e.Driver, err)
		}
	}
	if cur := linkBase(filepath.Join(dev, "driver")); cur != e.Driver {
		return fmt.Errorf("put %s back on %q: it is on %q", e.BDF, e.Driver, cur)
	}
	return nil
}

// restoreWhere restores the matching entries (last moved first) and drops those that
// are back from j, saving it. Entries that fail stay journaled for the next attempt.
func (m *Manager) restoreWhere(j *journal, match func(entry) bool) error {
	var errs []error
	keep := j.Entries[:0:0]
	changed := false
	for i := len(j.Entries) - 1; i >= 0; i-- {
		e := j.Entries[i]
		if !match(e) {
			keep = append(keep, e)
			continue
		}
		changed = true
		if err := m.restore(e); err != nil {
			errs = append(errs, err)
			keep = append(keep, e)
			continue
		}
		m.cfg.Log.Info("GPU function back on its driver", "bdf", e.BDF, "driver", e.Driver, "owner", e.Owner)
	}
	if !changed {
		return nil
	}
	slices.Reverse(keep)
	j.Entries = keep
	if err := m.writeJournal(j); err != nil {
		errs = append(errs, fmt.Errorf("GPU journal: %w", err))
	}
	return errors.Join(errs...)
}

// Release puts every device owner holds back on its driver. Call it once the VMM
// using them is gone (vfio-pci holds an unbind until the device is closed).
func (m *Manager) Release(ctx context.Context, owner string) error {
	if !m.journaled() {
		return nil
	}
	unlock, err := m.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	j, err := m.readJournal()
	if err != nil {
		return err
	}
	return m.restoreWhere(j, func(e entry) bool { return m.mine(e, owner) })
}

// Recover is for a driver's start: every device whose owner is not kept (its VM is
// not running) or whose move was cut short goes back to its driver. It returns the
// functions put back.
func (m *Manager) Recover(ctx context.Context, keep func(owner string) bool) ([]string, error) {
	if !m.journaled() {
		return nil, nil
	}
	unlock, err := m.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	j, err := m.readJournal()
	if err != nil {
		return nil, err
	}
	before := held(j)
	err = m.restoreWhere(j, func(e entry) bool {
		return e.Scope == m.cfg.Scope && (e.State == stateBinding || !keep(e.Owner))
	})
	after := held(j)
	var back []string
	for b := range before {
		if _, ok := after[b]; !ok {
			back = append(back, b)
		}
	}
	slices.Sort(back)
	return back, err
}
