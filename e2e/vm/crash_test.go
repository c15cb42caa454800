package vm_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestVMCrashKill9QEMU kills a running sandbox's QEMU with SIGKILL: the sandbox must go
// to ERROR with a reason naming the VM exit (and the console tail), and delete must
// leave no runner, vsock backend, socket, disk or lock behind.
func TestVMCrashKill9QEMU(t *testing.T) {
	r := startVMRun(t)
	const name = "e2e-crash"
	t0 := time.Now()
	r.cli("sandbox", "create", "--name", name, "--from", r.image, "--timeout", cliTimeout.String(), "--", "sleep", "1000000")
	t.Logf("create → READY took %v", time.Since(t0))

	dir, rec, ok := r.sandboxDir(name)
	if !ok || rec.RunnerPID == 0 || rec.VMMPID == 0 {
		t.Fatalf("no runner/QEMU pids in the driver state of %s (%+v)", name, rec)
	}
	vsock := childrenOf(rec.RunnerPID, "vhost-device-vsock")
	if len(vsock) == 0 {
		t.Fatalf("no vhost-device-vsock child of the runner (pid %d)", rec.RunnerPID)
	}
	t.Logf("state dir %s: runner %d, qemu %d, vhost-device-vsock %v", dir, rec.RunnerPID, rec.VMMPID, vsock)

	killed := time.Now()
	kill9(t, "QEMU", rec.VMMPID)
	v := r.waitPhaseOf(name, "ERROR", 2*time.Minute)
	t.Logf("phase ERROR %v after SIGKILL", time.Since(killed).Round(time.Millisecond))
	var why string
	for _, c := range v.Status.Conditions {
		m := strings.ToLower(c.Reason + " " + c.Message)
		if strings.Contains(m, "vm exited") || strings.Contains(m, "vmexited") || strings.Contains(m, "console") {
			why = c.Type + "/" + c.Reason + ": " + c.Message
			break
		}
	}
	if why == "" {
		t.Fatalf("phase ERROR but no condition names the VM exit or console: %+v", v.Status.Conditions)
	}
	t.Logf("condition: %s", why)

	r.deleteAndWaitGone(name, 2*time.Minute)
	for _, p := range append([]int{rec.RunnerPID}, vsock...) {
		waitDead(t, name, p, 30*time.Second)
	}
	waitNoProcs(t, dir, 30*time.Second)
	// The sandbox directory holds the control and vsock sockets, the disk and the
	// state lock: all of it must go.
	for _, p := range []string{rec.Paths.ControlSocket, rec.Paths.Disk, rec.Paths.VMMDir, filepath.Join(dir, "state.lock"), dir} {
		waitGone(t, p, 30*time.Second)
	}
	if ents, _ := os.ReadDir(filepath.Join(r.gwState, "vm-driver", "sb")); len(ents) != 0 {
		t.Errorf("sandbox state left behind: %v", ents)
	}
	if p := r.qemuProcs(); len(p) != 0 {
		t.Errorf("processes left behind: %v", p)
	}
}
