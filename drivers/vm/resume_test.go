package vm_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/drivers/vm"
	"github.com/openshell/openshell/drivers/vm/internal/state"
	"github.com/openshell/openshell/internal/procstat"
)

// withBootID returns cfg whose host boot id source answers id (a host reboot is a
// new id) and whose resume switch is resume (nil = default).
func withBootID(cfg vm.Config, id string, resume *bool) vm.Config {
	cfg.BootID = func() (string, error) { return id, nil }
	cfg.ResumeAfterHostReboot = resume
	return cfg
}

// bootedSandbox is a sandbox made Ready by a driver that saw host boot id "boot-1".
type bootedSandbox struct {
	cfg    vm.Config // without the boot id: each test adds the one it simulates
	gw     *gatewayStub
	dir    string // the driver's state dir
	id     string
	first  report // the guest's first report (its boot id)
	rec    *state.Record
	driver *vm.Driver // still open: each test closes it when it simulates the host
}

// readyInBoot1 creates a sandbox with a real VM and waits until it is Ready.
func readyInBoot1(t *testing.T) bootedSandbox {
	t.Helper()
	_, image := vmFixture(t)
	b := bootedSandbox{gw: newGatewayStub(t), dir: shortDir(t)}
	b.cfg = testConfig(t, b.dir, b.gw.addr())
	b.driver = newTestDriver(t, withBootID(b.cfg, "boot-1", nil))
	b.id = create(t, b.driver, image)
	b.first = b.gw.next(t, b.id, vmTimeout)
	waitFor(t, b.driver, b.id, "Ready", ready)
	b.rec = record(t, b.dir, b.id)
	return b
}

// powerLoss SIGKILLs, by pid, every process of a sandbox's runner session and its
// QEMU at once, as a power cut would end them: no tombstone, no clean-up.
func powerLoss(t *testing.T, rec *state.Record) {
	t.Helper()
	pids := procstat.SessionMembers(rec.RunnerPID, rec.RunnerStart)
	if state.SameProcess(rec.VMMPID, rec.VMMStart) {
		pids = append(pids, rec.VMMPID)
	}
	if len(pids) < 2 {
		t.Fatalf("runner session %d has processes %v: want at least the runner and QEMU", rec.RunnerPID, pids)
	}
	for _, p := range pids {
		syscall.Kill(p, syscall.SIGKILL)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, p := range pids {
		for time.Now().Before(deadline) {
			st, err := procstat.Read(p)
			if err != nil || st.State == 'Z' || st.State == 'X' {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if state.SameProcess(rec.RunnerPID, rec.RunnerStart) || state.SameProcess(rec.VMMPID, rec.VMMStart) {
		t.Fatalf("runner %d or QEMU %d survived SIGKILL", rec.RunnerPID, rec.VMMPID)
	}
}

// staysFailed checks that a driver reports the sandbox VMExited right after New and
// still does a while later, with no runner started for it.
func staysFailed(t *testing.T, d drivers.Driver, id, sbDir, wantMsg string) {
	t.Helper()
	check := func(when string) {
		sb, err := d.Get(t.Context(), id, "")
		if err != nil {
			t.Fatalf("Get %s: %v", when, err)
		}
		c := drivers.FindCondition(sb.GetStatus(), drivers.ConditionReady)
		if c.GetStatus() != drivers.StatusFalse || c.GetReason() != vm.ReasonVMExited || !strings.Contains(c.GetMessage(), wantMsg) {
			t.Errorf("%s: Ready %s reason %s message %q; want False VMExited mentioning %q", when, c.GetStatus(), c.GetReason(), c.GetMessage(), wantMsg)
		}
	}
	check("after New")
	time.Sleep(3 * time.Second)
	check("3s later")
	if n := runnersOf(sbDir); n != 0 {
		t.Errorf("%d runners started for a sandbox that must stay failed", n)
	}
}

// TestResumeAfterHostReboot: after a power loss (runner, QEMU and the driver gone at
// once), a driver that sees the same host boot id reports the sandbox VMExited as
// before; one with resume_after_host_reboot off too; one that sees a new boot id boots
// it again on its own, on the same disk (the guest finds the file its previous boot
// wrote), without New waiting for the boot.
func TestResumeAfterHostReboot(t *testing.T) {
	if testing.Short() {
		t.Skip("boots real VMs")
	}
	rb := readyInBoot1(t)
	cfg, gw, dir, id, first, rec := rb.cfg, rb.gw, rb.dir, rb.id, rb.first, rb.rec
	if rec.BootID != "boot-1" {
		t.Fatalf("record boot id %q, want boot-1 (the driver's)", rec.BootID)
	}
	rb.driver.Close()
	powerLoss(t, rec)

	t.Run("same boot id stays failed", func(t *testing.T) {
		d := newTestDriver(t, withBootID(cfg, "boot-1", nil))
		defer d.Close()
		staysFailed(t, d, id, rec.Paths.Dir, "runner is gone")
	})
	t.Run("switch off stays failed", func(t *testing.T) {
		off := false
		d := newTestDriver(t, withBootID(cfg, "boot-2", &off))
		defer d.Close()
		staysFailed(t, d, id, rec.Paths.Dir, "resume_after_host_reboot is off")
	})
	if r := record(t, dir, id); r.BootID != "boot-1" || r.Stopped {
		t.Fatalf("drivers that did not resume changed the record: %+v", r)
	}

	t.Run("new boot id resumes", func(t *testing.T) {
		t0 := time.Now()
		d := newTestDriver(t, withBootID(cfg, "boot-2", nil))
		defer d.Close()
		defer d.Delete(context.Background(), id, "")
		if took := time.Since(t0); took > 5*time.Second {
			t.Errorf("New took %v: it must not wait for the VM to boot", took)
		}
		sb, err := d.Get(t.Context(), id, "")
		if err != nil {
			t.Fatal(err)
		}
		if c := drivers.FindCondition(sb.GetStatus(), drivers.ConditionReady); c.GetReason() != drivers.ReasonStarting {
			t.Errorf("right after New: Ready %s reason %s %q; want Starting", c.GetStatus(), c.GetReason(), c.GetMessage())
		}
		second := gw.next(t, id, vmTimeout)
		waitFor(t, d, id, "Ready after the host reboot", ready)
		t.Logf("ready again %v after New", time.Since(t0))
		if second.BootID == first.BootID || second.BootID == "" {
			t.Errorf("guest boot id %q after resume, first boot %q: want a new guest boot", second.BootID, first.BootID)
		}
		if second.Prev != first.BootID {
			t.Errorf("the guest's file from its first boot is gone: prev=%q, want %q", second.Prev, first.BootID)
		}
		r := record(t, dir, id)
		if r.BootID != "boot-2" || r.RunnerPID == rec.RunnerPID || !state.SameProcess(r.RunnerPID, r.RunnerStart) {
			t.Errorf("record after resume: boot id %q runner %d (before %d): want boot-2 and a new live runner", r.BootID, r.RunnerPID, rec.RunnerPID)
		}
		if n := runnersOf(r.Paths.Dir); n != 1 {
			t.Errorf("%d runners after resume, want 1", n)
		}
		if deleted, err := d.Delete(t.Context(), id, ""); err != nil || !deleted {
			t.Fatalf("Delete = %v, %v", deleted, err)
		}
		assertNoLeftovers(t, dir, r, nil)
	})
}

// TestPidsOfAnEarlierBootAreLeftAlone: after a host reboot the pids in state.json may
// belong to other programs. A driver that sees a new boot id neither adopts such a pid
// as the runner nor kills it (here on Delete), though it is alive with the recorded
// start time and leads its own session.
func TestPidsOfAnEarlierBootAreLeftAlone(t *testing.T) {
	dir := shortDir(t)
	other := exec.Command("sleep", "300")
	other.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { other.Process.Kill(); other.Wait() }()
	pid := other.Process.Pid
	start, err := state.ProcStartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	id, name := drivertest.NewIDs()
	sbDir := filepath.Join(dir, "sb", state.DirName(id))
	if err := os.MkdirAll(sbDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := state.Create(&state.Record{
		SandboxID: id, SandboxName: name, CreatedAt: time.Now().UTC(), Paths: state.PathsFor(sbDir),
		RunnerPID: pid, RunnerStart: start, VMMPID: pid, VMMStart: start, BootID: "boot-before",
	}); err != nil {
		t.Fatal(err)
	}
	cfg := vm.Config{StateDir: dir, GatewayEndpoint: "127.0.0.1:1", RunnerCommand: []string{"/bin/false"}}
	d, err := vm.New(withBootID(cfg, "boot-now", nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	sb, err := d.Get(t.Context(), id, "")
	if err != nil {
		t.Fatal(err)
	}
	// No runner.json: it was being provisioned when the host went down.
	if c := drivers.FindCondition(sb.GetStatus(), drivers.ConditionReady); c.GetReason() != vm.ReasonProvisioningInterrupted {
		t.Errorf("adopted as %s %q; want ProvisioningInterrupted, not a re-adopted runner", c.GetReason(), c.GetMessage())
	}
	if deleted, err := d.Delete(t.Context(), id, ""); err != nil || !deleted {
		t.Fatalf("Delete = %v, %v", deleted, err)
	}
	if !state.SameProcess(pid, start) {
		t.Errorf("Delete killed pid %d recorded in an earlier boot of the host", pid)
	}
	if _, err := os.Stat(sbDir); !os.IsNotExist(err) {
		t.Errorf("sandbox directory still there: %v", err)
	}
}

// TestResumeAfterHostShutdown: an orderly host shutdown sends the runner SIGTERM; it
// powers the guest off and leaves a Stopped tombstone although the user never stopped
// the sandbox. Without a reboot that still reads as stopped; after one (new boot id)
// the sandbox boots again on its own, on the same disk.
func TestResumeAfterHostShutdown(t *testing.T) {
	if testing.Short() {
		t.Skip("boots real VMs")
	}
	rb := readyInBoot1(t)
	cfg, gw, id, first, rec := rb.cfg, rb.gw, rb.id, rb.first, rb.rec
	rb.driver.Close()
	if err := syscall.Kill(rec.RunnerPID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(vmTimeout)
	for state.SameProcess(rec.RunnerPID, rec.RunnerStart) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	ts, err := state.ReadTombstone(rec.Paths.Dir)
	if err != nil || ts == nil || ts.Reason != "Stopped" {
		t.Fatalf("tombstone after SIGTERM: %+v %v; want Stopped", ts, err)
	}

	t.Run("same boot id stays stopped", func(t *testing.T) {
		d := newTestDriver(t, withBootID(cfg, "boot-1", nil))
		defer d.Close()
		sb, err := d.Get(t.Context(), id, "")
		if err != nil {
			t.Fatal(err)
		}
		if !drivers.StopConfirmed(sb.GetStatus()) {
			t.Errorf("conditions %v: want Suspended=True as before", sb.GetStatus().GetConditions())
		}
		time.Sleep(2 * time.Second)
		if n := runnersOf(rec.Paths.Dir); n != 0 {
			t.Errorf("%d runners started without a reboot", n)
		}
	})
	t.Run("new boot id resumes", func(t *testing.T) {
		d := newTestDriver(t, withBootID(cfg, "boot-2", nil))
		defer d.Close()
		defer d.Delete(context.Background(), id, "")
		second := gw.next(t, id, vmTimeout)
		waitFor(t, d, id, "Ready after the host reboot", ready)
		if second.BootID == first.BootID || second.Prev != first.BootID {
			t.Errorf("after resume: boot %q prev %q; want a new boot whose prev is %q", second.BootID, second.Prev, first.BootID)
		}
		if ts, _ := state.ReadTombstone(rec.Paths.Dir); ts != nil {
			t.Errorf("tombstone %+v left while the resumed VM runs", ts)
		}
	})
}
