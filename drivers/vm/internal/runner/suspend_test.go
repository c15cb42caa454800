package runner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/guest/channel/wire"
	"github.com/openshell/openshell/vmm"
	"github.com/openshell/openshell/vmm/qemu"
)

// fakeSaver is a test double of a saveable machine: Save writes the file (or fails).
type fakeSaver struct {
	Machine
	saveErr  error
	saved    []string
	resumed  int
	killed   int
	exitedCh chan error
}

var _ saver = (*fakeSaver)(nil)

func (f *fakeSaver) Save(_ context.Context, path string) error {
	if f.saveErr != nil {
		return f.saveErr
	}
	f.saved = append(f.saved, path)
	return os.WriteFile(path, []byte("device state"), 0o600)
}
func (f *fakeSaver) Resume(context.Context) error { f.resumed++; return nil }
func (f *fakeSaver) Kill() error                  { f.killed++; f.exitedCh <- nil; return nil }

// serveControl runs the control API with sp's suspend hook on a real socket, and a
// main loop that hands requests to sp.handle like Run's.
func serveControl(t *testing.T, sp *suspender, m Machine, spec *Spec, exited chan error) (*Client, *string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: (&control{box: newStatusBox(Status{}), suspend: sp.request}).handler()}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	var reason string
	go func() {
		for req := range sp.reqs {
			if sp.handle(req, m, spec, exited, func(r, _ string) { reason = r }, slog.New(slog.NewTextHandler(io.Discard, nil))) {
				return
			}
		}
	}()
	return NewClient(sock), &reason
}

// TestSuspendRecordRoundTrip: a suspend writes the record (secret, machine, state
// file) next to the state, ends the machine; the next run's suspender restores that
// machine with the same secret and serves no bootstrap; the record is dropped before
// the guest resumes, and a failed restore is set aside so the next start boots.
func TestSuspendRecordRoundTrip(t *testing.T) {
	dir := t.TempDir()
	spec := &Spec{SandboxID: "sb-1", Machine: MachineSpec{VCPUs: 1, MemoryMiB: 128, Kernel: "/k", Initrd: "/i", ImageDisk: "/img", Disk: "/d", Transport: "virtio-serial"}}
	spec.Bootstrap.Token = "tok"
	sp, err := newSuspender(dir, spec)
	if err != nil || sp.resuming() {
		t.Fatalf("fresh sandbox: resuming=%v err=%v", sp.resuming(), err)
	}
	secret, err := sp.instanceSecret()
	if err != nil {
		t.Fatal(err)
	}
	m := &fakeSaver{exitedCh: make(chan error, 1)}
	cl, reason := serveControl(t, sp, m, spec, m.exitedCh)
	if err := cl.Suspend(t.Context()); err != nil {
		t.Fatalf("Suspend: %v", err)
	}
	if *reason != ReasonSuspended || m.killed != 1 || len(m.saved) != 1 {
		t.Fatalf("after suspend: reason %q, killed %d, saved %v", *reason, m.killed, m.saved)
	}
	b, err := os.ReadFile(filepath.Join(dir, SuspendFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, SuspendFile)); fi.Mode().Perm() != 0o600 {
		t.Fatalf("suspend record mode %v: it holds the instance secret, want 0600", fi.Mode().Perm())
	}
	if !strings.Contains(string(b), secret.String()) {
		t.Fatalf("record lacks the instance secret: %s", b)
	}

	// The next run, with a driver that changed the kernel since and moved the disks.
	next := &Spec{Machine: MachineSpec{VCPUs: 1, MemoryMiB: 128, Kernel: "/new-kernel", Initrd: "/new-initrd", ImageDisk: "/img2", Disk: "/d2", Transport: "auto"}}
	sp2, err := newSuspender(dir, next)
	if err != nil || !sp2.resuming() {
		t.Fatalf("suspended sandbox: resuming=%v err=%v", sp2.resuming(), err)
	}
	if next.Machine.Kernel != "/k" || next.Machine.Transport != "virtio-serial" || next.Machine.Disk != "/d2" || next.Machine.RestoreFrom != filepath.Join(dir, SuspendStateFile) {
		t.Fatalf("resumed machine %+v: want the saved kernel and channel, the current disks, restored from the state file", next.Machine)
	}
	// A VM claimed from a pool: its runner.json still names the pool; the resumed run
	// serves the identity it had when saved instead of waiting for a claim.
	pooled := &Spec{SandboxID: "pool-member", Pool: "small"}
	if _, err := newSuspender(dir, pooled); err != nil || pooled.Pool != "" || pooled.SandboxID != spec.SandboxID || pooled.Bootstrap.Token != "tok" {
		t.Fatalf("resumed claimed pool VM: %+v, %v; want the saved sandbox's identity, no pool", pooled, err)
	}
	got, err := sp2.instanceSecret()
	if err != nil || got != secret {
		t.Fatalf("resumed secret %v (%v), want the guest's %v", got, err, secret)
	}
	// No bootstrap document for a resumed guest: it is cleared, and the port offers
	// only the host's time (TestServeResumedGuestTheHostClock) until the runner ends.
	bl, _ := net.Listen("tcp", "127.0.0.1:0")
	doc := []byte(`{"token":"x"}`)
	served := make(chan struct{})
	var logs bytes.Buffer
	go func() {
		sp2.serveBootstrap(bl, doc, newStatusBox(Status{}), slog.New(slog.NewTextHandler(&logs, nil)))
		close(served)
	}()
	time.Sleep(50 * time.Millisecond)
	bl.Close()
	<-served
	if string(doc) == `{"token":"x"}` {
		t.Fatalf("the bootstrap document was kept for a resumed guest: %q", doc)
	}
	if strings.Contains(logs.String(), "took") {
		t.Fatalf("the port closed before the guest asked, yet the log says it took the host's time:\n%s", logs.String())
	}
	m2 := &fakeSaver{exitedCh: make(chan error, 1)}
	box := newStatusBox(Status{State: StateBooting})
	if err := sp2.resumeGuest(t.Context(), m2, box, slog.Default()); err != nil {
		t.Fatal(err)
	}
	if st, _ := box.get(); m2.resumed != 1 || st.State != StateRunning || Suspended(dir) {
		t.Fatalf("after resume: resumed %d, state %s, still suspended %v", m2.resumed, st.State, Suspended(dir))
	}
	if _, err := os.Stat(filepath.Join(dir, SuspendStateFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("state file kept after resume: %v", err)
	}

	// A restore that fails is set aside: the next start boots.
	if err := os.WriteFile(filepath.Join(dir, SuspendFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	sp3, _ := newSuspender(dir, &Spec{})
	sp3.setAside(errors.New("QEMU exited while restoring"), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if Suspended(dir) {
		t.Fatal("failed restore still recorded as suspended")
	}
	if _, err := os.Stat(filepath.Join(dir, suspendFailedFile)); err != nil {
		t.Fatalf("failed restore's record not kept for diagnosis: %v", err)
	}
}

// TestSuspendRefusals: a machine that cannot be saved answers 409 (CannotSave, the VM
// runs on); a save that fails answers 500 and leaves nothing; a pooled VM before its
// claim has nothing to suspend; a corrupt record is an error naming it.
func TestSuspendRefusals(t *testing.T) {
	for _, tc := range []struct {
		name       string
		saveErr    error
		noSecret   bool
		cannotSave bool
		want       string
	}{
		{"cannot save", fmt.Errorf("the vhost-user-vsock channel cannot be migrated: %w", vmm.ErrCannotSave), false, true, "vhost-user-vsock"},
		{"save failed", errors.New("disk full"), false, false, "disk full"},
		{"pooled, unclaimed", nil, true, true, "pooled VM"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			spec := &Spec{}
			sp, _ := newSuspender(dir, spec)
			if !tc.noSecret {
				s := wire.Secret{1}
				sp.secret = &s
			}
			m := &fakeSaver{saveErr: tc.saveErr, exitedCh: make(chan error, 1)}
			cl, reason := serveControl(t, sp, m, spec, m.exitedCh)
			err := cl.Suspend(t.Context())
			var se *SuspendError
			if !errors.As(err, &se) || se.CannotSave != tc.cannotSave || !strings.Contains(se.Msg, tc.want) {
				t.Fatalf("Suspend = %v; want a SuspendError (CannotSave %v) naming %q", err, tc.cannotSave, tc.want)
			}
			if *reason != "" || m.killed != 0 || Suspended(dir) {
				t.Fatalf("refused suspend ended the VM or left a record (reason %q, killed %d)", *reason, m.killed)
			}
		})
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, SuspendFile), []byte("{not json"), 0o600)
	if _, err := newSuspender(dir, &Spec{}); err == nil || !strings.Contains(err.Error(), "suspend record") {
		t.Fatalf("corrupt record: %v", err)
	}
}

// TestSuspendRecordCPU: a record written before the CPU model was recorded (no "cpu")
// resumes with the model machines had then; a recorded model is resumed as recorded.
func TestSuspendRecordCPU(t *testing.T) {
	for _, c := range []struct{ field, want string }{
		{"", qemu.CPUUnrecorded},
		{`"cpu": "qemu64,+rdrand",`, "qemu64,+rdrand"},
	} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, SuspendStateFile), []byte("state"), 0o600); err != nil {
			t.Fatal(err)
		}
		rec := `{"state_file": "` + filepath.Join(dir, SuspendStateFile) + `", "bytes": 5,
  "machine": {` + c.field + ` "vcpus": 1, "memory_mib": 128, "kernel": "/k", "initrd": "/i", "image_disk": "/img", "disk": "/d", "accel": "tcg", "transport": "virtio-serial"},
  "instance_secret": "` + strings.Repeat("ab", 32) + `", "saved_at": "2026-12-01T10:00:00Z", "save_ms": 80}`
		if err := os.WriteFile(filepath.Join(dir, SuspendFile), []byte(rec), 0o600); err != nil {
			t.Fatal(err)
		}
		next := &Spec{SandboxID: "sb-1", Machine: MachineSpec{VCPUs: 1, MemoryMiB: 128, Kernel: "/k2", ImageDisk: "/img", Disk: "/d"}}
		sp, err := newSuspender(dir, next)
		if err != nil || !sp.resuming() {
			t.Fatalf("record %s: resuming=%v, %v", c.field, sp != nil && sp.resuming(), err)
		}
		if next.Machine.CPU != c.want {
			t.Fatalf("record with %q: resumed machine's CPU %q; want %q", c.field, next.Machine.CPU, c.want)
		}
	}
}

// TestForkRecordFromAnotherHostBoot: a copy's memory file is not synced, so a copy
// whose record was made in another boot of the host (a restart cut it off before it
// ran) is set aside and boots from its disk; one made in this boot resumes, and so
// does a user's suspend (synced) whatever the boot.
func TestForkRecordFromAnotherHostBoot(t *testing.T) {
	old := hostBootID
	hostBootID = func() (string, error) { return "this-boot", nil }
	t.Cleanup(func() { hostBootID = old })
	for _, tc := range []struct {
		name           string
		forkOf, bootID string
		resumes        bool
	}{
		{"copy made in another boot", "src-1", "earlier-boot", false},
		{"copy made in this boot", "src-1", "this-boot", true},
		{"copy from before boot ids were recorded", "src-1", "", true},
		{"a user's suspend, another boot", "", "earlier-boot", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			rec := &SuspendRecord{StateFile: filepath.Join(dir, SuspendStateFile), InstanceSecret: "00", ForkOf: tc.forkOf, HostBootID: tc.bootID,
				Machine: MachineSpec{VCPUs: 1, MemoryMiB: 128, Kernel: "/k", Transport: "virtio-serial"}}
			if err := WriteSuspend(dir, rec); err != nil {
				t.Fatal(err)
			}
			sp, err := newSuspender(dir, &Spec{Machine: MachineSpec{Kernel: "/current"}})
			if err != nil {
				t.Fatal(err)
			}
			if sp.resuming() != tc.resumes || Suspended(dir) != tc.resumes || (sp.staleFork != nil) == tc.resumes {
				t.Fatalf("resuming=%v suspended=%v staleFork=%v; want resuming=%v", sp.resuming(), Suspended(dir), sp.staleFork != nil, tc.resumes)
			}
			if _, err := os.Stat(filepath.Join(dir, suspendFailedFile)); (err == nil) == tc.resumes {
				t.Fatalf("set-aside record present=%v; want %v", err == nil, !tc.resumes)
			}
		})
	}
}
