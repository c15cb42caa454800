package qemu

// Saving and restoring a machine: QEMU's migration written to a file (the guest
// paused first, so one pass suffices) and read back by a new QEMU started with
// -incoming and -S, so the caller decides when the restored guest runs again.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/digitalocean/go-qemu/qmp"

	"github.com/openshell/openshell/vmm"
	"github.com/openshell/openshell/vmm/channel"
)

var _ vmm.Saver = (*Machine)(nil)

// snapshotTransports are the channel devices QEMU can migrate: vhost-vsock (the guest
// gets a transport reset and its connections drop) and virtio-serial (the port is
// seen closed, then reopened by the new host end). vhost-user-vsock is marked
// unmigratable by QEMU (checked on QEMU 7.2: "State blocked by non-migratable device").
var snapshotTransports = []string{channel.TransportVhostVsock, channel.TransportVirtioSerial}

// saveBandwidth lifts QEMU's default migration cap (128 MiB/s): the target is a local
// file and the guest is paused.
const saveBandwidth = 64 << 30

// qmpCall runs one QMP command with arguments on a fresh connection and decodes the
// "return" member into out (when non-nil).
func (m *Machine) qmpCall(cmd string, args any, out any) error {
	mon, err := qmp.NewSocketMonitor("unix", statePath(m.cfg, qmpSockName), 2*time.Second)
	if err != nil {
		return err
	}
	if err := mon.Connect(); err != nil {
		return err
	}
	defer mon.Disconnect()
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	raw, err := mon.Run(b)
	if err != nil {
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	if out == nil {
		return nil
	}
	var r struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return fmt.Errorf("qmp %s reply %q: %w", cmd, raw, err)
	}
	return json.Unmarshal(r.Return, out)
}

// canSave says why this machine's device set cannot be migrated ("" = it can).
func (m *Machine) canSave() error {
	m.mu.Lock()
	tr := m.transport.Name
	m.mu.Unlock()
	switch {
	case tr == channel.TransportVhostUserVsock:
		return fmt.Errorf("vm %s: the %s channel cannot be migrated by QEMU: run VMs that are to be suspended or snapshotted with the virtio-serial transport (vm driver: --vsock-transport virtio-serial) or on a host with /dev/vhost-vsock: %w",
			m.cfg.Name, tr, vmm.ErrCannotSave)
	case len(m.cfg.SharedDirs) > 0:
		return fmt.Errorf("vm %s: SharedDirs: virtiofs devices cannot be migrated by QEMU; a machine with shared directories cannot be saved: %w", m.cfg.Name, vmm.ErrCannotSave)
	case len(m.cfg.PCIDevices) > 0:
		return fmt.Errorf("vm %s: PCIDevices: passed-through devices cannot be migrated; a machine with them cannot be saved: %w", m.cfg.Name, vmm.ErrCannotSave)
	}
	return nil
}

// checkStatePath refuses a path the exec: migration URI could not carry safely.
func checkStatePath(what, p string) error {
	if !filepath.IsAbs(p) {
		return fmt.Errorf("%s %q: use an absolute path", what, p)
	}
	if strings.ContainsAny(p, "'\n\x00") {
		return fmt.Errorf("%s %q: the path must not contain quotes or newlines", what, p)
	}
	return nil
}

// Save pauses the guest and writes its memory and device state to path (written to
// path.part, synced, then renamed). QEMU flushes the disks as the migration
// completes, so the disks and the state file agree. The guest stays paused on
// success; on failure it is resumed when it was running before.
func (m *Machine) Save(ctx context.Context, path string) (retErr error) {
	if err := checkStatePath("save state file", path); err != nil {
		return fmt.Errorf("vm %s: %w", m.cfg.Name, err)
	}
	if err := m.canSave(); err != nil {
		return err
	}
	select {
	case <-m.exited:
		return fmt.Errorf("vm %s: cannot save: the VM is not running: %w", m.cfg.Name, vmm.ErrCannotSave)
	default:
	}
	if m.PID() == 0 {
		return fmt.Errorf("vm %s: cannot save: the VM was never started: %w", m.cfg.Name, vmm.ErrCannotSave)
	}
	st, err := m.status()
	if err != nil {
		return fmt.Errorf("vm %s: query status before save: %w", m.cfg.Name, err)
	}
	// The guest must learn that its session over virtio-serial is gone: drop the host
	// end first, so the port-closed event is in the saved state.
	detached := false
	if h := m.Host(); h != nil && h.Detach() {
		detached = true
		m.waitChardevClosed(ctx, "ch0")
	}
	if err := m.qmpCall("stop", nil, nil); err != nil {
		if detached {
			m.Host().Attach()
		}
		return fmt.Errorf("vm %s: pause: %w", m.cfg.Name, err)
	}
	tmp := path + ".part"
	defer func() {
		if retErr == nil {
			return
		}
		_ = os.Remove(tmp)
		if detached {
			m.Host().Attach()
		}
		if st == "running" {
			if err := m.qmpCall("cont", nil, nil); err != nil {
				m.log.Warn("resume after a failed save", "err", err)
			}
		}
	}()
	if err := m.qmpCall("migrate-set-parameters", map[string]any{"max-bandwidth": saveBandwidth}, nil); err != nil {
		return fmt.Errorf("vm %s: %w", m.cfg.Name, err)
	}
	if err := m.ignoreSharedRAM(); err != nil {
		return err
	}
	start := time.Now()
	if err := m.qmpCall("migrate", map[string]any{"uri": "exec:cat > '" + tmp + "'"}, nil); err != nil {
		return fmt.Errorf("vm %s: save to %s: %w", m.cfg.Name, path, err)
	}
	if err := m.waitMigration(ctx, "save"); err != nil {
		_ = m.qmpCall("migrate_cancel", nil, nil)
		return err
	}
	if err := syncRename(tmp, path); err != nil {
		return fmt.Errorf("vm %s: %w", m.cfg.Name, err)
	}
	m.mu.Lock()
	m.saved = true
	m.mu.Unlock()
	fi, _ := os.Stat(path)
	var size int64
	if fi != nil {
		size = fi.Size()
	}
	m.log.Info("vm saved", "file", path, "bytes", size, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// waitMigration polls query-migrate until the migration completes, fails, QEMU exits
// or ctx ends.
func (m *Machine) waitMigration(ctx context.Context, what string) error {
	for {
		var r struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := m.qmpCall("query-migrate", nil, &r); err != nil {
			select {
			case <-m.exited:
				return fmt.Errorf("vm %s: QEMU exited during %s (%v): %s", m.cfg.Name, what, m.exitErr, tail(statePath(m.cfg, qemuLogName), 2048))
			default:
			}
			return fmt.Errorf("vm %s: %s: %w", m.cfg.Name, what, err)
		}
		switch r.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("vm %s: %s %s: %s", m.cfg.Name, what, r.Status, r.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("vm %s: %s: %w", m.cfg.Name, what, ctx.Err())
		case <-m.exited:
			return fmt.Errorf("vm %s: QEMU exited during %s (%v): %s", m.cfg.Name, what, m.exitErr, tail(statePath(m.cfg, qemuLogName), 2048))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func syncRename(tmp, path string) error {
	f, err := os.Open(tmp)
	if err != nil {
		return fmt.Errorf("saved state: %w", err)
	}
	err = f.Sync()
	f.Close()
	if err != nil {
		return fmt.Errorf("sync saved state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("saved state: %w", err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// Resume continues a paused guest (after Save, or a restored machine) and lets the
// host end of the channel connect again.
func (m *Machine) Resume(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := m.qmpCall("cont", nil, nil); err != nil {
		return fmt.Errorf("vm %s: resume: %w", m.cfg.Name, err)
	}
	m.mu.Lock()
	m.saved = false
	m.mu.Unlock()
	if h := m.Host(); h != nil {
		h.Attach()
	}
	return nil
}

// waitChardevClosed waits until QEMU has seen the host end of a socket chardev go and
// the guest has reacted (closed its end of the port, which our guest does when its
// session ends), so the saved guest has already dropped its old session: a guest that
// only learned of it after a restore could read the next host end's greeting into the
// dead session. Bounded; a slow guest is saved anyway (it then recovers by timeouts).
func (m *Machine) waitChardevClosed(ctx context.Context, label string) {
	deadline := time.Now().Add(3 * time.Second)
	hostGone := false
	for time.Now().Before(deadline) && ctx.Err() == nil {
		var devs []struct {
			Label        string `json:"label"`
			Filename     string `json:"filename"`
			FrontendOpen bool   `json:"frontend-open"`
		}
		if err := m.qmpCall("query-chardev", nil, &devs); err != nil {
			return
		}
		for _, d := range devs {
			if d.Label != label {
				continue
			}
			if strings.HasPrefix(d.Filename, "disconnected:") {
				hostGone = true
			}
			if hostGone && !d.FrontendOpen {
				return
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	m.log.Warn("the guest did not close its channel port after the host end went; saving anyway", "chardev", label, "host_end_gone", hostGone)
}

// memBackend is guest RAM: a shared memfd (vhost-user backends map it), or the shared
// file cfg.MemoryFile.
func memBackend(cfg vmm.Config, mem string) string {
	if cfg.MemoryFile != "" {
		return "memory-backend-file,id=mem,size=" + mem + "M,share=on,mem-path=" + qemuEscape(cfg.MemoryFile)
	}
	return "memory-backend-memfd,id=mem,size=" + mem + "M,share=on"
}

// ignoreSharedRAM leaves file-backed RAM out of the migration stream (it stays in
// cfg.MemoryFile); both ends must say so.
func (m *Machine) ignoreSharedRAM() error {
	if m.cfg.MemoryFile == "" {
		return nil
	}
	caps := []map[string]any{{"capability": "x-ignore-shared", "state": true}}
	if err := m.qmpCall("migrate-set-capabilities", map[string]any{"capabilities": caps}, nil); err != nil {
		return fmt.Errorf("vm %s: keep RAM in %s: %w", m.cfg.Name, m.cfg.MemoryFile, err)
	}
	return nil
}

// restoreArgs start QEMU paused, loading cfg.RestoreFrom: at once, or (RAM in a
// file) once waitRestored has set the capabilities the stream needs.
func restoreArgs(cfg vmm.Config) []string {
	if cfg.RestoreFrom == "" {
		return nil
	}
	if cfg.MemoryFile != "" {
		return []string{"-S", "-incoming", "defer"}
	}
	return []string{"-S", "-incoming", "exec:cat '" + cfg.RestoreFrom + "'"}
}

// prepareMemoryFile clears a cold start's RAM file (what a previous run left must not
// reach a new boot) and checks a restore's is there.
func (m *Machine) prepareMemoryFile() error {
	f := m.cfg.MemoryFile
	if f == "" {
		return nil
	}
	if err := checkStatePath("MemoryFile", f); err != nil {
		return fmt.Errorf("vm %s: %w", m.cfg.Name, err)
	}
	if m.cfg.RestoreFrom != "" {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("vm %s: MemoryFile: the saved machine's RAM is gone: %w", m.cfg.Name, err)
		}
		return nil
	}
	if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("vm %s: MemoryFile: %w", m.cfg.Name, err)
	}
	return nil
}

// checkRestore refuses a restore QEMU could not perform, naming the fix.
func (m *Machine) checkRestore(transport string) error {
	p := m.cfg.RestoreFrom
	if p == "" {
		return m.prepareMemoryFile()
	}
	if err := checkStatePath("RestoreFrom", p); err != nil {
		return fmt.Errorf("vm %s: %w", m.cfg.Name, err)
	}
	if _, err := os.Stat(p); err != nil {
		return fmt.Errorf("vm %s: RestoreFrom: %w", m.cfg.Name, err)
	}
	if err := m.prepareMemoryFile(); err != nil {
		return err
	}
	if transport == channel.TransportVhostUserVsock {
		return fmt.Errorf("vm %s: RestoreFrom: a saved machine cannot use the %s channel; use virtio-serial or vhost-vsock: %w", m.cfg.Name, transport, vmm.ErrCannotSave)
	}
	return nil
}

// waitRestored waits until QEMU has loaded the saved state (it then stays paused).
func (m *Machine) waitRestored(ctx context.Context) error {
	if m.cfg.RestoreFrom == "" {
		return nil
	}
	start := time.Now()
	if m.cfg.MemoryFile != "" {
		if err := m.ignoreSharedRAM(); err != nil {
			return err
		}
		if err := m.qmpCall("migrate-incoming", map[string]any{"uri": "exec:cat '" + m.cfg.RestoreFrom + "'"}, nil); err != nil {
			return fmt.Errorf("vm %s: restore from %s: %w", m.cfg.Name, m.cfg.RestoreFrom, err)
		}
	}
	for {
		st, err := m.status()
		if err == nil && st != "inmigrate" {
			if st != "paused" && st != "prelaunch" {
				return fmt.Errorf("vm %s: restore from %s: QEMU state %q after loading, want paused", m.cfg.Name, m.cfg.RestoreFrom, st)
			}
			m.log.Info("vm restored (paused)", "file", m.cfg.RestoreFrom, "took", time.Since(start).Round(time.Millisecond))
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("vm %s: restore from %s: %w", m.cfg.Name, m.cfg.RestoreFrom, ctx.Err())
		case <-m.exited:
			return fmt.Errorf("vm %s: QEMU exited while restoring %s (%v): %s", m.cfg.Name, m.cfg.RestoreFrom, m.exitErr, tail(statePath(m.cfg, qemuLogName), 2048))
		case <-time.After(10 * time.Millisecond):
		}
	}
}
