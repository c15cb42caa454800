package vm

// Create from a snapshot (DriverSandboxSpec.from_snapshot): instead of building a
// disk and booting, the new sandbox's directory gets its own copies of the
// snapshot's writable disk, guest RAM and device state (sparse copies; the read-only
// image disk, kernel and initramfs are hard links), and a suspend record marked as a
// copy of the snapshotted sandbox (runner.ForkRecord). Its runner then restores the
// guest as for a resume and hands the restored supervisor this sandbox's identity
// (runner/fork.go). The rest is as for any create: the gateway minted the id and
// token, the driver allocates a new vsock CID (a virtio-serial channel has none: the
// runner's socket is the VM's own), and a later stop/start cold-boots the copy's own
// disk.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/vm/internal/runner"
	"github.com/openshell/openshell/drivers/vm/internal/state"
	"github.com/openshell/openshell/internal/sparsefile"
)

// prepareFromSnapshot is prepare for a create from snapshot name.
func (d *Driver) prepareFromSnapshot(ctx context.Context, s *sandbox, spec *computev1.DriverSandboxSpec, name string, progress func(string)) (*runner.Spec, error) {
	dir, err := d.snapshotDir(name)
	if err != nil {
		return nil, err
	}
	lk := snapLocks.get(dir)
	lk.RLock() // a delete waits until the copies are made
	defer lk.RUnlock()
	man, err := readManifest(dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, fmt.Errorf("snapshot %q: no such snapshot (see openshell snapshot list): %w", name, drivers.ErrNotFound)
		}
		return nil, err
	}
	snap, err := runner.ReadSnapshot(dir)
	if err != nil {
		return nil, err
	}
	// The image's facts for the bootstrap document (user, workdir); its disk is the
	// snapshot's own, which the restored guest has mounted.
	cache, entry, err := d.ensureImage(ctx, man.Image, progress)
	if err != nil {
		return nil, fmt.Errorf("snapshot %q: image %s: %w", name, man.Image, err)
	}
	if _, err := state.Update(s.paths.Dir, func(r *state.Record) error {
		r.Image, r.ImageDigest, r.VCPUs, r.MemoryMiB = man.Image, entry.Digest, snap.Machine.VCPUs, snap.Machine.MemoryMiB
		return nil
	}); err != nil {
		return nil, err
	}
	s.stamp("image")
	progress(fmt.Sprintf("copying snapshot %s (disk, memory)", name))
	own := func(f string) string { return filepath.Join(s.paths.Dir, "snapshot-"+f) }
	for _, l := range []string{runner.SnapshotImageFile, runner.SnapshotKernelFile, runner.SnapshotInitrdFile} {
		if err := sparsefile.LinkOrCopy(own(l), filepath.Join(dir, l), 0o600); err != nil {
			return nil, fmt.Errorf("snapshot %q: %w", name, err)
		}
	}
	// The memory is not synced: it matters only until the copy resumes, and a sync
	// wrote all of it to disk (~150 ms of a create here). The record names this boot
	// of the host, so that a copy cut off by a host restart before it ran boots from
	// its disk instead (the runner checks). The disk is synced: the sandbox's files
	// live on.
	ramCopy := sparsefile.CopyUnsynced
	if d.bootID == "" { // a restart could not be told: sync it
		ramCopy = sparsefile.Copy
	}
	copies := []struct {
		dst, src string
		copy     func(dst, src string, perm os.FileMode) error
	}{
		{s.paths.Disk, runner.SnapshotDiskFile, sparsefile.Copy},
		{filepath.Join(s.paths.Dir, runner.GuestRAMFile), runner.SnapshotRAMFile, ramCopy},
		{filepath.Join(s.paths.Dir, runner.SuspendStateFile), runner.SnapshotStateFile, sparsefile.Copy},
	}
	for _, c := range copies {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := c.copy(c.dst, filepath.Join(dir, c.src), 0o600); err != nil {
			return nil, fmt.Errorf("snapshot %q: %w", name, err)
		}
	}
	s.stamp("disk")
	rec := runner.ForkRecord(snap, filepath.Join(s.paths.Dir, runner.SuspendStateFile), own(runner.SnapshotKernelFile), own(runner.SnapshotInitrdFile), man.SourceID)
	rec.Machine.CID, rec.HostBootID = s.cid, d.bootID
	if err := runner.WriteSuspend(s.paths.Dir, rec); err != nil {
		return nil, err
	}
	boot, err := d.bootstrapConfig(s, spec, entry, spec.GetGatewaySocketDir())
	if err != nil {
		return nil, err
	}
	egress, err := d.egressPolicy(s.id)
	if err != nil {
		return nil, err
	}
	m := rec.Machine
	m.ImageDisk, m.Disk = own(runner.SnapshotImageFile), s.paths.Disk
	return &runner.Spec{
		SandboxID:        s.id,
		SandboxName:      s.name,
		Machine:          m,
		GatewayAddr:      d.cfg.GatewayEndpoint,
		GatewaySocketDir: spec.GetGatewaySocketDir(),
		Egress:           egress,
		Bootstrap:        *boot,
		StopTimeout:      runner.Duration(d.cfg.StopTimeout),
		ImageCacheDir:    cache.Dir(),
		ImageKey:         entry.Key,
	}, nil
}
