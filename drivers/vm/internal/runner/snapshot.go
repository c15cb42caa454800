package runner

// Snapshots: on request the runner pauses its VM, saves its device state (the guest
// RAM stays in its file: x-ignore-shared), copies the RAM file and the writable disk
// while the guest cannot change them, then lets the guest run on. The snapshot
// directory then holds everything a later runner needs to start a copy of the guest
// as it was (restore.json): the machine, the channel's instance secret the guest
// holds, and links to the read-only image disk, kernel and initramfs it ran with
// (a rebuilt initramfs of another size could not be restored into).
//
// The source's session to the gateway drops for the pause (the channel's host end
// is detached so the saved guest has let go of it, as for a suspend) and the guest
// reconnects once resumed.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/openshell/openshell/drivers/vm/internal/state"
	"github.com/openshell/openshell/guest/channel/wire"
	"github.com/openshell/openshell/internal/atomicfile"
	"github.com/openshell/openshell/internal/sparsefile"
	"github.com/openshell/openshell/vmm"
)

// Files of a snapshot directory.
const (
	SnapshotRecordFile = "restore.json" // SnapshotRecord
	SnapshotStateFile  = "vm.state"     // the VMM's device state
	SnapshotRAMFile    = "guest.ram"    // the guest's RAM
	SnapshotDiskFile   = "disk.img"     // the writable disk
	SnapshotImageFile  = "image.img"    // the read-only image disk (a link)
	SnapshotKernelFile = "kernel"       // (a link)
	SnapshotInitrdFile = "initrd"       // (a link)
)

// SnapshotRecord is what a runner needs to start a copy of a snapshotted guest.
// File names are relative to the snapshot directory.
type SnapshotRecord struct {
	Machine MachineSpec `json:"machine"`
	// InstanceSecret is the secret the snapshotted guest's supervisor holds (hex): a
	// copy's runner admits that guest's first streams with it.
	InstanceSecret string    `json:"instance_secret"`
	SourceID       string    `json:"source_sandbox_id"`
	SourceName     string    `json:"source_sandbox_name"`
	SavedAt        time.Time `json:"saved_at"`
	// PausedMillis is how long the source was paused; StateBytes the device state.
	PausedMillis int64 `json:"paused_ms"`
	StateBytes   int64 `json:"state_bytes"`
	// DiskBytes is the writable disk's apparent size.
	DiskBytes int64 `json:"disk_bytes"`
}

// ReadSnapshot reads a snapshot directory's record.
func ReadSnapshot(dir string) (*SnapshotRecord, error) {
	b, err := os.ReadFile(filepath.Join(dir, SnapshotRecordFile))
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", filepath.Base(dir), err)
	}
	var r SnapshotRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("snapshot %s: %s: %w", filepath.Base(dir), SnapshotRecordFile, err)
	}
	if r.InstanceSecret == "" || r.Machine.MemoryMiB == 0 {
		return nil, fmt.Errorf("snapshot %s: %s: instance_secret and machine are required", filepath.Base(dir), SnapshotRecordFile)
	}
	return &r, nil
}

// snapshotVM pauses m, saves it into dir (which must exist and be empty), copies its
// RAM and writable disk there, and resumes it whatever happened. The read-only files
// are linked after the guest runs again.
func snapshotVM(ctx context.Context, dir string, m Machine, spec *Spec, paths state.Paths, secret wire.Secret) (rec *SnapshotRecord, retErr error) {
	sv, ok := m.(saver)
	if !ok {
		return nil, fmt.Errorf("this VM's backend cannot save a running machine: %w", vmm.ErrCannotSave)
	}
	ram := guestRAMFile(spec, paths)
	if ram == "" {
		return nil, fmt.Errorf("this VM's RAM is not kept in a file (its channel is %q): run sandboxes to be snapshotted with vsock_transport = \"virtio-serial\" (or vhost-vsock where /dev/vhost-vsock exists): %w",
			spec.Machine.Transport, vmm.ErrCannotSave)
	}
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("snapshot dir %q: must be an absolute path", dir)
	}
	ctx, cancel := context.WithTimeout(ctx, saveTimeout)
	defer cancel()
	start := time.Now()
	if err := sv.Save(ctx, filepath.Join(dir, SnapshotStateFile)); err != nil {
		return nil, err // the backend resumed the guest
	}
	copyErr := func() error {
		if err := sparsefile.Copy(filepath.Join(dir, SnapshotRAMFile), ram, 0o600); err != nil {
			return fmt.Errorf("copy the guest RAM: %w", err)
		}
		if err := sparsefile.Copy(filepath.Join(dir, SnapshotDiskFile), spec.Machine.Disk, 0o600); err != nil {
			return fmt.Errorf("copy the writable disk: %w", err)
		}
		return nil
	}()
	paused := time.Since(start)
	if err := sv.Resume(context.WithoutCancel(ctx)); err != nil {
		return nil, errors.Join(copyErr, fmt.Errorf("resume after the snapshot: %w", err))
	}
	if copyErr != nil {
		return nil, copyErr
	}
	for _, l := range []struct{ dst, src string }{
		{SnapshotImageFile, spec.Machine.ImageDisk}, {SnapshotKernelFile, spec.Machine.Kernel}, {SnapshotInitrdFile, spec.Machine.Initrd},
	} {
		if err := sparsefile.LinkOrCopy(filepath.Join(dir, l.dst), l.src, 0o600); err != nil {
			return nil, fmt.Errorf("keep %s with the snapshot: %w", l.src, err)
		}
	}
	mach := spec.Machine
	mach.RestoreFrom, mach.CPU = "", guestCPU(m)
	r := &SnapshotRecord{Machine: mach, InstanceSecret: secret.String(), SourceID: spec.SandboxID, SourceName: spec.SandboxName,
		SavedAt: time.Now().UTC(), PausedMillis: paused.Milliseconds()}
	if fi, err := os.Stat(filepath.Join(dir, SnapshotStateFile)); err == nil {
		r.StateBytes = fi.Size()
	}
	if fi, err := os.Stat(filepath.Join(dir, SnapshotDiskFile)); err == nil {
		r.DiskBytes = fi.Size()
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err == nil {
		err = atomicfile.WriteFile(filepath.Join(dir, SnapshotRecordFile), b, 0o600)
	}
	if err != nil {
		return nil, fmt.Errorf("write the snapshot record: %w", err)
	}
	return r, nil
}

// Snapshot asks the runner to snapshot its running VM into dir (absolute, existing,
// empty). The VM runs on in every case.
func (c *Client) Snapshot(ctx context.Context, dir string) (*SnapshotRecord, error) {
	b, _ := json.Marshal(map[string]string{"dir": dir})
	resp, err := c.do(ctx, http.MethodPost, "/snapshot", b)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode == http.StatusOK {
		var r SnapshotRecord
		if err := json.Unmarshal(body, &r); err != nil {
			return nil, fmt.Errorf("runner %s: snapshot: %w", c.socket, err)
		}
		return &r, nil
	}
	var e struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal(body, &e)
	if e.Error == "" {
		e.Error = fmt.Sprintf("runner %s: snapshot: HTTP %d: %s", c.socket, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return nil, &SuspendError{Msg: e.Error, CannotSave: resp.StatusCode == http.StatusConflict}
}

// serveSnapshot handles POST /snapshot {"dir": ...}: 200 with the record, 409 when
// the VM cannot be saved, 500 when the attempt failed (the VM runs on).
func (c *control) serveSnapshot(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Dir string `json:"dir"`
	}
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewDecoder(io.LimitReader(r.Body, 8192)).Decode(&req); err != nil || !filepath.IsAbs(req.Dir) {
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": "snapshot: the body must be {\"dir\": ABSOLUTE_PATH}"})
		return
	}
	if c.snapshot == nil {
		w.WriteHeader(http.StatusConflict)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": "this runner cannot snapshot its VM"})
		return
	}
	rec, err := c.snapshot(r.Context(), req.Dir)
	switch {
	case err == nil:
		_ = json.NewEncoder(w).Encode(rec)
		return
	case errors.Is(err, vmm.ErrCannotSave):
		w.WriteHeader(http.StatusConflict)
	default:
		w.WriteHeader(http.StatusInternalServerError)
	}
	_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
}

// requestSnapshot hands a snapshot request to the main loop (it shares the suspend
// queue: both need the machine to themselves) and waits for the record.
func (sp *suspender) requestSnapshot(ctx context.Context, dir string) (*SnapshotRecord, error) {
	req := suspendRequest{ctx: ctx, reply: make(chan error, 1), snapshotDir: dir, record: new(*SnapshotRecord)}
	select {
	case sp.reqs <- req:
	case <-sp.done:
		return nil, errors.New("the VM is stopping")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case err := <-req.reply:
		if err != nil {
			return nil, err
		}
		return *req.record, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// handleSnapshot serves a snapshot request in the main loop; the VM runs on.
func (sp *suspender) handleSnapshot(req suspendRequest, m Machine, spec *Spec, log *slog.Logger) {
	if sp.secret == nil {
		req.reply <- fmt.Errorf("the VM serves no sandbox yet (a pooled VM before its claim): nothing to snapshot: %w", vmm.ErrCannotSave)
		return
	}
	if sp.resume != nil {
		req.reply <- fmt.Errorf("the VM is still being resumed: snapshot it once it is ready: %w", vmm.ErrCannotSave)
		return
	}
	rec, err := snapshotVM(req.ctx, req.snapshotDir, m, spec, state.PathsFor(sp.dir), *sp.secret)
	if err == nil {
		*req.record = rec
		log.Info("VM snapshotted; it runs on", "dir", req.snapshotDir, "paused_ms", rec.PausedMillis, "state_bytes", rec.StateBytes)
	} else {
		log.Warn("snapshot failed; the VM runs on", "dir", req.snapshotDir, "err", err)
	}
	req.reply <- err
}
