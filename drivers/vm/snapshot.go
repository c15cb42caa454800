package vm

// Snapshots of running VM sandboxes (drivers.Snapshotter). Each snapshot is a
// directory <StateDir>/snapshots/<name>: the runner's files (runner/snapshot.go: the
// saved device state, copies of the guest RAM and the writable disk, links to the
// read-only image disk, kernel and initramfs, restore.json) and the driver's
// manifest.json. A snapshot is built in <name>.partial and renamed into place when
// complete, so a listing never shows a half-written one and a crash leaves only a
// .partial directory (removed when the driver starts). They are files: a driver or
// gateway restart finds them again.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/openshell/openshell/api/snapshotv1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/vm/internal/runner"
	"github.com/openshell/openshell/drivers/vm/internal/state"
	"github.com/openshell/openshell/internal/atomicfile"
	"github.com/openshell/openshell/internal/sparsefile"
)

var _ drivers.Snapshotter = (*Driver)(nil)

// snapshotManifestFile is the driver's description of a snapshot.
const snapshotManifestFile = "manifest.json"

// partialSuffix marks a snapshot directory still being written.
const partialSuffix = ".partial"

// snapshotName is a DNS label: it names a directory and shows in listings.
var snapshotName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// snapshotManifest is manifest.json.
type snapshotManifest struct {
	Name       string    `json:"name"`
	SourceID   string    `json:"source_sandbox_id"`
	SourceName string    `json:"source_sandbox_name"`
	Workspace  string    `json:"workspace,omitempty"`
	Image      string    `json:"image,omitempty"`
	VCPUs      int       `json:"vcpus"`
	MemoryMiB  int       `json:"memory_mib"`
	DiskBytes  int64     `json:"disk_bytes"`
	Created    time.Time `json:"created"`
	PausedMs   int64     `json:"paused_ms"`
	StateBytes int64     `json:"state_bytes"`
}

// snapshotLocks serialises work on snapshot names: a save, a delete, and a create
// that copies from one (read) never overlap on the same name.
type snapshotLocks struct {
	mu    sync.Mutex
	names map[string]*sync.RWMutex
}

var snapLocks = &snapshotLocks{names: map[string]*sync.RWMutex{}}

func (l *snapshotLocks) get(dir string) *sync.RWMutex {
	l.mu.Lock()
	defer l.mu.Unlock()
	m, ok := l.names[dir]
	if !ok {
		m = &sync.RWMutex{}
		l.names[dir] = m
	}
	return m
}

func (d *Driver) snapshotsDir() string { return filepath.Join(d.cfg.StateDir, "snapshots") }

// snapshotDir checks name and returns its directory.
func (d *Driver) snapshotDir(name string) (string, error) {
	if !snapshotName.MatchString(name) {
		return "", fmt.Errorf("snapshot name %q: use 1-63 lower-case letters, digits and '-' (not first or last): %w", name, drivers.ErrInvalidArgument)
	}
	return filepath.Join(d.snapshotsDir(), name), nil
}

// SaveSnapshot implements drivers.Snapshotter: the running sandbox is paused while
// its runner saves and copies it, then runs on.
func (d *Driver) SaveSnapshot(ctx context.Context, req *snapshotv1.SaveSnapshotRequest) (retSnap *snapshotv1.Snapshot, retErr error) {
	id := req.GetSandboxId()
	dir, err := d.snapshotDir(req.GetName())
	if err != nil {
		return nil, err
	}
	s, ph, _, unlock, err := d.beginOp(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	switch ph {
	case phaseRunning:
	case phaseStopped:
		return nil, fmt.Errorf("vm sandbox %q is %s: a snapshot is taken of a running sandbox; start it, then snapshot it: %w", id, stoppedMessage(s.paths.Dir), drivers.ErrFailedPrecondition)
	case phaseProvisioning, phaseBooting:
		return nil, fmt.Errorf("vm sandbox %q is still starting: snapshot it once it is ready: %w", id, drivers.ErrFailedPrecondition)
	default:
		return nil, fmt.Errorf("vm sandbox %q is not running (%s): only a running sandbox can be snapshotted: %w", id, s.reason, drivers.ErrFailedPrecondition)
	}
	lk := snapLocks.get(dir)
	lk.Lock()
	defer lk.Unlock()
	if _, err := os.Stat(dir); err == nil {
		return nil, fmt.Errorf("snapshot %q exists already: choose another name or delete it first (openshell snapshot delete %s): %w", req.GetName(), req.GetName(), drivers.ErrAlreadyExists)
	}
	tmp := dir + partialSuffix
	_ = os.RemoveAll(tmp) // a crashed attempt's leftovers
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return nil, fmt.Errorf("snapshot %q: %w", req.GetName(), err)
	}
	defer func() {
		if retErr != nil {
			_ = os.RemoveAll(tmp)
		}
	}()
	d.log.Info("snapshotting VM sandbox", "sandbox_id", id, "snapshot", req.GetName())
	rec, err := runner.NewClient(s.paths.ControlSocket).Snapshot(ctx, tmp)
	if err != nil {
		var se *runner.SuspendError
		if errors.As(err, &se) && se.CannotSave {
			return nil, fmt.Errorf("vm sandbox %q cannot be snapshotted: %s: %w", id, se.Msg, drivers.ErrFailedPrecondition)
		}
		return nil, fmt.Errorf("vm sandbox %q: snapshot (the sandbox runs on): %w", id, err)
	}
	man := snapshotManifest{Name: req.GetName(), SourceID: id, SourceName: req.GetSandboxName(), Workspace: req.GetWorkspace(),
		VCPUs: rec.Machine.VCPUs, MemoryMiB: rec.Machine.MemoryMiB, DiskBytes: rec.DiskBytes, Created: rec.SavedAt,
		PausedMs: rec.PausedMillis, StateBytes: rec.StateBytes}
	if man.SourceName == "" {
		man.SourceName = s.name
	}
	if r, err := state.Load(s.paths.Dir); err == nil {
		man.Image = r.Image
	}
	b, err := json.MarshalIndent(man, "", "  ")
	if err == nil {
		err = atomicfile.WriteFile(filepath.Join(tmp, snapshotManifestFile), b, 0o600)
	}
	if err == nil {
		err = os.Rename(tmp, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("snapshot %q: %w", req.GetName(), err)
	}
	d.log.Info("VM sandbox snapshotted", "sandbox_id", id, "snapshot", req.GetName(), "paused_ms", rec.PausedMillis, "bytes", sparsefile.AllocatedOwn(dir))
	return manifestProto(&man, dir), nil
}

func manifestProto(m *snapshotManifest, dir string) *snapshotv1.Snapshot {
	return &snapshotv1.Snapshot{Name: m.Name, SourceSandboxId: m.SourceID, SourceSandboxName: m.SourceName, Workspace: m.Workspace,
		Image: m.Image, Vcpus: uint32(m.VCPUs), MemoryMib: uint32(m.MemoryMiB), DiskSizeBytes: m.DiskBytes,
		CreatedAtMs: m.Created.UnixMilli(), Bytes: sparsefile.AllocatedOwn(dir), PausedMs: m.PausedMs}
}

// readManifest reads a snapshot directory's manifest.
func readManifest(dir string) (*snapshotManifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, snapshotManifestFile))
	if err != nil {
		return nil, err
	}
	var m snapshotManifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("snapshot %s: %s: %w", filepath.Base(dir), snapshotManifestFile, err)
	}
	return &m, nil
}

// ListSnapshots implements drivers.Snapshotter. A directory without a readable
// manifest is skipped (and logged): it is not a snapshot this driver wrote.
func (d *Driver) ListSnapshots(context.Context) ([]*snapshotv1.Snapshot, error) {
	ents, err := os.ReadDir(d.snapshotsDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	var out []*snapshotv1.Snapshot
	for _, e := range ents {
		if !e.IsDir() || strings.HasSuffix(e.Name(), partialSuffix) || !snapshotName.MatchString(e.Name()) {
			continue
		}
		dir := filepath.Join(d.snapshotsDir(), e.Name())
		m, err := readManifest(dir)
		if err != nil {
			d.log.Warn("skipping a snapshot directory without a readable manifest", "dir", dir, "err", err)
			continue
		}
		m.Name = e.Name()
		out = append(out, manifestProto(m, dir))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetName() < out[j].GetName() })
	return out, nil
}

// SnapshotUsage is what the snapshots of a state dir hold (doctor).
type SnapshotUsage struct {
	Count int `json:"count"`
	// Bytes counts each snapshot's own files only, not what it shares by hard link
	// with the image cache.
	Bytes int64 `json:"bytes"`
}

// SnapshotsOnDisk counts the snapshots under stateDir (see ListSnapshots).
func SnapshotsOnDisk(ctx context.Context, stateDir string) (SnapshotUsage, error) {
	d := &Driver{cfg: Config{StateDir: stateDir}, log: slog.New(slog.DiscardHandler)}
	l, err := d.ListSnapshots(ctx)
	u := SnapshotUsage{Count: len(l)}
	for _, s := range l {
		u.Bytes += s.GetBytes()
	}
	return u, err
}

// DeleteSnapshot implements drivers.Snapshotter: the snapshot's files are removed
// (sandboxes made from it have their own copies). It waits for creates that are
// copying from it.
func (d *Driver) DeleteSnapshot(_ context.Context, name string) (int64, error) {
	dir, err := d.snapshotDir(name)
	if err != nil {
		return 0, err
	}
	lk := snapLocks.get(dir)
	lk.Lock()
	defer lk.Unlock()
	if _, err := readManifest(dir); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, fmt.Errorf("snapshot %q: no such snapshot (see openshell snapshot list): %w", name, drivers.ErrNotFound)
		}
		return 0, err
	}
	freed := sparsefile.AllocatedOwn(dir)
	// Renamed first, so a listing never sees a half-deleted snapshot.
	gone := dir + ".deleting"
	if err := os.Rename(dir, gone); err != nil {
		return 0, fmt.Errorf("delete snapshot %q: %w", name, err)
	}
	if err := os.RemoveAll(gone); err != nil {
		return 0, fmt.Errorf("delete snapshot %q: %w", name, err)
	}
	d.log.Info("snapshot deleted", "snapshot", name, "freed_bytes", freed)
	return freed, nil
}

// cleanPartialSnapshots removes what interrupted saves and deletes left.
func (d *Driver) cleanPartialSnapshots() {
	ents, _ := os.ReadDir(d.snapshotsDir())
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), partialSuffix) || strings.HasSuffix(e.Name(), ".deleting") {
			_ = os.RemoveAll(filepath.Join(d.snapshotsDir(), e.Name()))
		}
	}
}
