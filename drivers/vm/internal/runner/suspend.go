package runner

// Suspend and resume: on request the runner saves the VM (memory and device state to
// a file in the sandbox directory, disks flushed), records what a later runner needs
// to bring the same guest back (the machine as it ran, the instance secret the guest
// still holds) and ends the VM. The next runner for the sandbox finds that record,
// restores the VM instead of booting it and serves no bootstrap document: the guest
// already has its configuration, and its supervisor reconnects its sessions.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/openshell/openshell/drivers/vm/internal/state"
	"github.com/openshell/openshell/guest/channel/wire"
	"github.com/openshell/openshell/internal/atomicfile"
	"github.com/openshell/openshell/vmm"
	"github.com/openshell/openshell/vmm/channel"
	"github.com/openshell/openshell/vmm/qemu"
)

// ReasonSuspended is the tombstone reason of a runner that saved its VM on request.
const ReasonSuspended = "Suspended"

// Files of a suspended sandbox, in its state directory.
const (
	SuspendFile      = "suspend.json"  // SuspendRecord
	SuspendStateFile = "suspend.state" // the VMM's saved memory and device state
	// suspendFailedFile keeps the record of a restore that failed, for diagnosis; the
	// next start boots from the disk.
	suspendFailedFile = "suspend.failed.json"
)

// SuspendRecord is what a runner needs to restore a suspended VM.
type SuspendRecord struct {
	// StateFile is the VMM's saved state.
	StateFile string `json:"state_file"`
	// Bytes is the state file's size.
	Bytes int64 `json:"bytes"`
	// Machine is the machine as it ran: a restore needs the same one.
	Machine MachineSpec `json:"machine"`
	// InstanceSecret is the secret the guest's supervisor holds (hex): the resumed
	// runner admits the guest's streams with it.
	InstanceSecret string    `json:"instance_secret"`
	SavedAt        time.Time `json:"saved_at"`
	// Identity is the sandbox the VM served when saved. A VM claimed from a warm pool
	// got it at its claim, after its runner.json was written (which still names the
	// pool): the resumed runner serves this identity rather than wait for a claim.
	Identity *Claim `json:"identity,omitempty"`
	// SaveMillis is how long the save took.
	SaveMillis int64 `json:"save_ms"`
	// ForkOf is set on a copy started from a snapshot (fork.go): the id of the
	// snapshotted sandbox, whose identity and InstanceSecret the guest still holds.
	ForkOf string `json:"fork_of,omitempty"`
	// HostBootID is the host's boot id when a copy's files were made. Its memory file
	// is copied without a sync, so a copy that finds another boot id was cut off by a
	// host restart before it ran, and its memory may never have reached the disk: it
	// boots from its disk instead.
	HostBootID string `json:"host_boot_id,omitempty"`
}

// hostBootID reads the host's boot id (tests replace it).
var hostBootID = state.HostBootID

// GuestRAMFile holds the guest RAM of a QEMU VM that can be suspended: saving then
// writes only the device state, and resuming maps the RAM back.
const GuestRAMFile = "guest.ram"

// guestRAMFile is where a QEMU VM keeps its RAM: in the sandbox directory when its
// channel can be migrated (an explicit virtio-serial or vhost-vsock transport), else
// anonymous memory ("").
func guestRAMFile(spec *Spec, paths state.Paths) string {
	switch spec.Machine.Transport {
	case channel.TransportVirtioSerial, channel.TransportVhostVsock:
		return filepath.Join(paths.Dir, GuestRAMFile)
	}
	return ""
}

// ReadSuspend returns the sandbox's suspend record, nil when it is not suspended.
func ReadSuspend(dir string) (*SuspendRecord, error) {
	b, err := os.ReadFile(filepath.Join(dir, SuspendFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read suspend record: %w", err)
	}
	var r SuspendRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("suspend record %s: %w", dir, err)
	}
	if r.StateFile == "" || r.InstanceSecret == "" {
		return nil, fmt.Errorf("suspend record %s: state_file and instance_secret are required", dir)
	}
	return &r, nil
}

// Suspended reports whether the sandbox in dir holds a suspended VM.
func Suspended(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, SuspendFile))
	return err == nil
}

// dropSuspend removes the record and the state file: once the restored guest runs,
// the saved memory no longer matches the disks and must never be restored again.
func dropSuspend(dir string, r *SuspendRecord) error {
	err := os.Remove(filepath.Join(dir, SuspendFile))
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	if r != nil {
		if rerr := os.Remove(r.StateFile); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
	}
	return err
}

// failSuspend sets a record whose restore failed aside, so the next start boots.
func failSuspend(dir string, r *SuspendRecord) {
	_ = os.Rename(filepath.Join(dir, SuspendFile), filepath.Join(dir, suspendFailedFile))
	if r != nil {
		_ = os.Remove(r.StateFile)
	}
}

// resumeMachine applies a suspend record to the spec the runner booted with: the
// machine as it was saved (kernel, initramfs, size, channel), the current disks.
func resumeMachine(spec *Spec, r *SuspendRecord) {
	m := r.Machine
	m.ImageDisk, m.Disk = spec.Machine.ImageDisk, spec.Machine.Disk
	m.RestoreFrom = r.StateFile
	if m.CPU == "" {
		// Saved before the CPU model was recorded: the guest gets the model machines
		// had then, not today's default (a restored kernel keeps the CPU features it
		// saw at boot).
		m.CPU = qemu.CPUUnrecorded
	}
	spec.Machine = m
	if spec.Pool != "" && r.Identity != nil {
		r.Identity.apply(spec)
	}
}

// saver is a Machine that can be saved (the vmm backend's Saver).
type saver interface {
	Save(ctx context.Context, path string) error
	Resume(ctx context.Context) error
}

func (m vmmMachine) Save(ctx context.Context, path string) error {
	s, ok := m.Machine.(vmm.Saver)
	if !ok {
		return fmt.Errorf("this VM's backend cannot save a running machine (Features.Snapshots is false; use the qemu backend): %w", vmm.ErrCannotSave)
	}
	return s.Save(ctx, path)
}

// guestCPU is the guest CPU model m runs with, to record with its saved state
// ("" when the backend does not say: a restore then gets the backend's default).
func guestCPU(m Machine) string {
	if vm, ok := m.(vmmMachine); ok {
		if c, ok := vm.Machine.(interface{ CPU() string }); ok {
			return c.CPU()
		}
	}
	return ""
}

func (m vmmMachine) Resume(ctx context.Context) error {
	s, ok := m.Machine.(vmm.Saver)
	if !ok {
		return fmt.Errorf("this VM's backend cannot resume a saved machine: %w", vmm.ErrCannotSave)
	}
	return s.Resume(ctx)
}

// saveTimeout bounds one save (guest memory written to a local file).
const saveTimeout = 5 * time.Minute

// suspendVM saves m into dir and writes the suspend record. On error the VM is
// running again (the backend resumes it) and nothing of the attempt is left.
func suspendVM(ctx context.Context, dir string, m Machine, spec *Spec, secret wire.Secret) (*SuspendRecord, error) {
	sv, ok := m.(saver)
	if !ok {
		return nil, fmt.Errorf("this VM's backend cannot save a running machine: %w", vmm.ErrCannotSave)
	}
	ctx, cancel := context.WithTimeout(ctx, saveTimeout)
	defer cancel()
	statePath := filepath.Join(dir, SuspendStateFile)
	start := time.Now()
	if err := sv.Save(ctx, statePath); err != nil {
		return nil, err
	}
	var size int64
	if fi, err := os.Stat(statePath); err == nil {
		size = fi.Size()
	}
	mach := spec.Machine
	mach.RestoreFrom, mach.CPU = "", guestCPU(m)
	r := &SuspendRecord{StateFile: statePath, Bytes: size, Machine: mach, InstanceSecret: secret.String(),
		SavedAt: time.Now().UTC(), SaveMillis: time.Since(start).Milliseconds(),
		Identity: &Claim{SandboxID: spec.SandboxID, SandboxName: spec.SandboxName, Bootstrap: spec.Bootstrap,
			Egress: spec.Egress, GatewaySocketDir: spec.GatewaySocketDir}}
	b, err := json.MarshalIndent(r, "", "  ")
	if err == nil {
		err = atomicfile.WriteFile(filepath.Join(dir, SuspendFile), b, 0o600)
	}
	if err != nil {
		_ = os.Remove(statePath)
		if rerr := sv.Resume(ctx); rerr != nil {
			err = errors.Join(err, fmt.Errorf("resume after the failed suspend: %w", rerr))
		}
		return nil, fmt.Errorf("write suspend record: %w", err)
	}
	return r, nil
}

// Suspend asks the runner to save its VM and end it; it returns once the VM is saved
// (the runner then exits with the tombstone reason Suspended) or with why it could
// not be (the VM then runs on).
func (c *Client) Suspend(ctx context.Context) error {
	resp, err := c.do(ctx, "POST", "/suspend", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var r struct {
		Error string `json:"error"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&r)
	switch {
	case resp.StatusCode == 200:
		return nil
	case r.Error != "":
		return &SuspendError{Msg: r.Error, CannotSave: resp.StatusCode == 409}
	}
	return fmt.Errorf("runner %s: suspend: HTTP %d", c.socket, resp.StatusCode)
}

// SuspendError is a runner's refusal or failure to suspend. CannotSave: the VM's
// backend or devices cannot be saved (a precondition, not a fault).
type SuspendError struct {
	Msg        string
	CannotSave bool
}

func (e *SuspendError) Error() string { return e.Msg }

// serveSuspend handles POST /suspend: 200 once saved, 409 when the VM cannot be
// saved, 500 when saving failed (the VM runs on in both cases).
func (c *control) serveSuspend(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	if c.suspend == nil {
		w.WriteHeader(http.StatusConflict)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": "this runner cannot suspend its VM"})
		return
	}
	err := c.suspend(r.Context())
	switch {
	case err == nil:
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("{}"))
		return
	case errors.Is(err, vmm.ErrCannotSave):
		w.WriteHeader(http.StatusConflict)
	default:
		w.WriteHeader(http.StatusInternalServerError)
	}
	_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
}

// suspendRequest carries one suspend request to the runner's main loop.
type suspendRequest struct {
	ctx   context.Context
	reply chan error
	// snapshotDir set: a snapshot into that directory (snapshot.go), not a suspend;
	// its record is put in *record before the reply.
	snapshotDir string
	record      **SnapshotRecord
}

// requestSuspend hands a request to the main loop and waits for its answer.
func requestSuspend(ctx context.Context, reqs chan<- suspendRequest, done <-chan struct{}) error {
	req := suspendRequest{ctx: ctx, reply: make(chan error, 1)}
	select {
	case reqs <- req:
	case <-done:
		return errors.New("the VM is stopping")
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-req.reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// suspender is the runner's suspend/resume state for one run.
type suspender struct {
	dir    string
	resume *SuspendRecord // non-nil: this run restores a suspended VM
	fork   *SuspendRecord // non-nil: the restored VM is a copy from a snapshot (fork.go); never cleared
	secret *wire.Secret   // the guest's instance secret, once the sandbox is served
	reqs   chan suspendRequest
	done   chan struct{} // closed when the runner's main loop ends
	// staleFork is a copy's record set aside because it was made before the host
	// restarted (the runner logs it).
	staleFork *SuspendRecord
}

// newSuspender reads the sandbox's suspend record; when there is one, spec's machine
// becomes the saved machine, restored from its state file.
func newSuspender(dir string, spec *Spec) (*suspender, error) {
	r, err := ReadSuspend(dir)
	if err != nil {
		return nil, err
	}
	var stale *SuspendRecord
	if r != nil && r.ForkOf != "" && r.HostBootID != "" {
		if now, err := hostBootID(); err == nil && now != r.HostBootID {
			failSuspend(dir, r)
			stale, r = r, nil
		}
	}
	if r != nil {
		resumeMachine(spec, r)
	}
	sp := &suspender{dir: dir, resume: r, staleFork: stale, reqs: make(chan suspendRequest), done: make(chan struct{})}
	if r != nil && r.ForkOf != "" {
		sp.fork = r
	}
	return sp, nil
}

// resuming reports whether this run restores a suspended VM.
func (sp *suspender) resuming() bool { return sp.resume != nil }

// instanceSecret is the secret the guest is admitted with: the one it already holds
// when resumed, else a new one.
func (sp *suspender) instanceSecret() (wire.Secret, error) {
	var s wire.Secret
	var err error
	if sp.resume != nil && !sp.forking() {
		s, err = wire.ParseSecret(sp.resume.InstanceSecret)
		if err != nil {
			return s, fmt.Errorf("suspend record: instance_secret: %w", err)
		}
	} else if s, err = newInstanceSecret(); err != nil {
		return s, err
	}
	sp.secret = &s
	return s, nil
}

// serveBootstrap serves the bootstrap document once, except to a resumed guest: it
// has its configuration already, and nothing else in it may fetch one. It is offered
// the host's time instead (serveHostClock).
func (sp *suspender) serveBootstrap(l net.Listener, doc []byte, box *statusBox, log *slog.Logger) {
	if sp.forking() {
		sp.serveFork(l, doc, box, log)
		return
	}
	if sp.resume != nil {
		clear(doc)
		if sp.secret == nil {
			_ = l.Close()
			return
		}
		serveHostClock(l, *sp.secret, box, log)
		return
	}
	serveBootstrapOnce(l, doc, box, log)
}

// setAside keeps a failed restore from being tried again (called as the run ends
// with an error before the restored guest ran).
func (sp *suspender) setAside(err error, log *slog.Logger) {
	if err == nil || sp.resume == nil || !Suspended(sp.dir) {
		return
	}
	log.Error("restoring the suspended VM failed; its saved memory is dropped and the next start boots from the disk", "err", err)
	failSuspend(sp.dir, sp.resume)
}

// resumeGuest lets a restored (paused) VM run: the saved state is dropped first, so
// that it is never restored over disks the guest has since written.
func (sp *suspender) resumeGuest(ctx context.Context, m Machine, box *statusBox, log *slog.Logger) error {
	if sp.resume == nil {
		return nil
	}
	sv, ok := m.(saver)
	if !ok {
		return fmt.Errorf("this VM's backend cannot resume a saved machine: %w", vmm.ErrCannotSave)
	}
	r := sp.resume
	if err := dropSuspend(sp.dir, r); err != nil {
		return fmt.Errorf("drop the suspend record before resuming: %w", err)
	}
	if err := sv.Resume(ctx); err != nil {
		return err
	}
	sp.resume = nil
	box.update(func(s *Status) { s.State, s.BootedAt = StateRunning, time.Now().UTC() })
	log.Info("VM resumed from suspend", "saved_at", r.SavedAt, "state_bytes", r.Bytes)
	return nil
}

// request is the control API's suspend hook.
func (sp *suspender) request(ctx context.Context) error { return requestSuspend(ctx, sp.reqs, sp.done) }

// handle serves one suspend request in the runner's main loop; it reports true when
// the VM was saved and ended (the runner then exits), false when it runs on.
func (sp *suspender) handle(req suspendRequest, m Machine, spec *Spec, exited <-chan error, setReason func(reason, why string), log *slog.Logger) bool {
	if req.snapshotDir != "" {
		sp.handleSnapshot(req, m, spec, log)
		return false
	}
	if sp.secret == nil {
		req.reply <- fmt.Errorf("the VM serves no sandbox yet (a pooled VM before its claim): nothing to suspend: %w", vmm.ErrCannotSave)
		return false
	}
	r, err := suspendVM(req.ctx, sp.dir, m, spec, *sp.secret)
	if err != nil {
		log.Warn("suspend failed; the VM runs on", "err", err)
		req.reply <- err
		return false
	}
	setReason(ReasonSuspended, fmt.Sprintf("suspended on request: memory saved to %s (%d MiB, %d ms)", r.StateFile, r.Bytes>>20, r.SaveMillis))
	_ = m.Kill()
	<-exited
	log.Info("VM suspended", "state_file", r.StateFile, "bytes", r.Bytes, "save_ms", r.SaveMillis)
	req.reply <- nil
	return true
}
