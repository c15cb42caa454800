package vm_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/drivers/vm"
	"github.com/openshell/openshell/drivers/vm/internal/state"
	"github.com/openshell/openshell/internal/procstat"
	"github.com/openshell/openshell/internal/testenv"
)

// TCG on two shared cores: boots take seconds, several at once take longer.
const vmTimeout = 3 * time.Minute

func TestConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("boots real VMs")
	}
	_, image := vmFixture(t)
	gw := newGatewayStub(t)
	drivertest.Suite(t, func(t *testing.T) drivers.Driver {
		return newTestDriver(t, testConfig(t, shortDir(t), gw.addr()))
	}, drivertest.Options{Image: image, ReadyTimeout: vmTimeout})
}

// waitFor polls Get until cond holds.
func waitFor(t *testing.T, d drivers.Driver, id, what string, cond func(*computev1.DriverSandbox) bool) *computev1.DriverSandbox {
	t.Helper()
	deadline := time.Now().Add(vmTimeout)
	var last *computev1.DriverSandbox
	for time.Now().Before(deadline) {
		sb, err := d.Get(t.Context(), id, "")
		if err == nil {
			last = sb
			if cond(sb) {
				return sb
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s of %s; last: %v", what, id, last.GetStatus())
	return nil
}

func ready(sb *computev1.DriverSandbox) bool {
	c := drivers.FindCondition(sb.GetStatus(), drivers.ConditionReady)
	return c != nil && c.GetStatus() == drivers.StatusTrue
}

func create(t *testing.T, d drivers.Driver, image string) (id string) {
	t.Helper()
	id, name := drivertest.NewIDs()
	sb := drivertest.DefaultSandbox(id, name, image)
	sb.Spec.Template.Resources = &computev1.DriverResourceRequirements{CpuLimit: "500m", MemoryLimit: "300Mi"}
	if err := d.Create(t.Context(), sb); err != nil {
		t.Fatalf("Create: %v", err)
	}
	return id
}

func record(t *testing.T, stateDir, id string) *state.Record {
	t.Helper()
	rec, err := state.Load(filepath.Join(stateDir, "sb", state.DirName(id)))
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// TestBootstrapAndGatewayBridge: the guest gets its bootstrap config (id, token,
// command, endpoint) and reaches the gateway through the runner's bridge; the
// per-sandbox resources become the VM's size.
func TestBootstrapAndGatewayBridge(t *testing.T) {
	if testing.Short() {
		t.Skip("boots real VMs")
	}
	_, image := vmFixture(t)
	gw := newGatewayStub(t)
	dir := shortDir(t)
	d := newTestDriver(t, testConfig(t, dir, gw.addr()))
	defer d.Close()
	id := create(t, d, image)
	defer d.Delete(context.Background(), id, "")
	r := gw.next(t, id, vmTimeout)
	if !r.HasToken || r.Endpoint != "http://host.openshell.internal:"+strings.Split(gw.addr(), ":")[1] || strings.Join(r.Command, " ") != "sleep 3600" {
		t.Errorf("guest report %+v: want token, endpoint on the gateway port, command sleep 3600", r)
	}
	if r.Prev != "" || r.BootID == "" {
		t.Errorf("first boot: prev=%q boot_id=%q", r.Prev, r.BootID)
	}
	waitFor(t, d, id, "Ready", ready)
	rec := record(t, dir, id)
	if rec.VCPUs != 1 || rec.MemoryMiB != 300 {
		t.Errorf("record vcpus=%d memory=%d, want 1 and 300 from 500m/300Mi", rec.VCPUs, rec.MemoryMiB)
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", rec.VMMPID))
	if !strings.Contains(strings.ReplaceAll(string(cmdline), "\x00", " "), " -m 300") {
		t.Errorf("qemu command line lacks -m 300: %q", cmdline)
	}
	// The guest CID is the driver's allocation (first one: 1000), whatever the transport.
	if rec.CID != 1000 {
		t.Errorf("guest CID %d, want 1000", rec.CID)
	}
	reqs, err := d.ListenerRequirements(t.Context())
	if err != nil || len(reqs) != 1 || reqs[0].GetLoopbackInterface() == nil {
		t.Errorf("ListenerRequirements = %v, %v; want loopback", reqs, err)
	}
}

// TestStopStartKeepsDisk: a file the guest wrote before Stop is there after Start.
func TestStopStartKeepsDisk(t *testing.T) {
	if testing.Short() {
		t.Skip("boots real VMs")
	}
	_, image := vmFixture(t)
	gw := newGatewayStub(t)
	dir := shortDir(t)
	d := newTestDriver(t, testConfig(t, dir, gw.addr()))
	defer d.Close()
	id := create(t, d, image)
	defer d.Delete(context.Background(), id, "")
	first := gw.next(t, id, vmTimeout)
	waitFor(t, d, id, "Ready", ready)
	oldQEMU := record(t, dir, id).VMMPID

	t0 := time.Now()
	if err := d.Stop(t.Context(), id, ""); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	t.Logf("graceful stop took %v", time.Since(t0))
	sb := waitFor(t, d, id, "Suspended", func(sb *computev1.DriverSandbox) bool { return drivers.StopConfirmed(sb.GetStatus()) })
	if drivers.FindCondition(sb.GetStatus(), drivers.ConditionSuspended).GetStatus() != drivers.StatusTrue {
		t.Errorf("stopped sandbox conditions %v: want Suspended=True", sb.GetStatus().GetConditions())
	}
	if state.SameProcess(oldQEMU, record(t, dir, id).VMMStart) {
		t.Errorf("QEMU %d still runs after Stop", oldQEMU)
	}
	if _, err := os.Stat(filepath.Join(dir, "sb", state.DirName(id), state.DiskFile)); err != nil {
		t.Errorf("writable disk gone after Stop: %v", err)
	}

	// Concurrent Starts boot exactly one VM.
	errs := make(chan error, 3)
	for range 3 {
		go func() { errs <- d.Start(t.Context(), id, "") }()
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatalf("Start: %v", err)
		}
	}
	second := gw.next(t, id, vmTimeout)
	if n := runnersOf(record(t, dir, id).Paths.Dir); n != 1 {
		t.Errorf("%d runner processes for one sandbox after concurrent Starts", n)
	}
	if second.Prev != first.BootID || second.BootID == first.BootID {
		t.Errorf("after stop/start: prev=%q boot=%q; want prev = first boot %q and a new boot", second.Prev, second.BootID, first.BootID)
	}
	waitFor(t, d, id, "Ready after Start", ready)
}

// TestCrashThenDelete: kill -9 of QEMU is reported as Ready=False VMExited (terminal)
// with the console tail; Delete then leaves no process and no file.
func TestCrashThenDelete(t *testing.T) {
	if testing.Short() {
		t.Skip("boots real VMs")
	}
	_, image := vmFixture(t)
	gw := newGatewayStub(t)
	dir := shortDir(t)
	d := newTestDriver(t, testConfig(t, dir, gw.addr()))
	defer d.Close()
	id := create(t, d, image)
	gw.next(t, id, vmTimeout)
	waitFor(t, d, id, "Ready", ready)
	rec := record(t, dir, id)
	helpers := procstat.SessionMembers(rec.RunnerPID, rec.RunnerStart)
	if len(helpers) < 3 {
		t.Logf("runner session members: %v (runner, qemu, vsock backend expected)", helpers)
	}
	if err := syscall.Kill(rec.VMMPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	sb := waitFor(t, d, id, "VMExited", func(sb *computev1.DriverSandbox) bool {
		c := drivers.FindCondition(sb.GetStatus(), drivers.ConditionReady)
		return c != nil && c.GetStatus() == drivers.StatusFalse && c.GetReason() == vm.ReasonVMExited
	})
	c := drivers.FindCondition(sb.GetStatus(), drivers.ConditionReady)
	if drivers.IsTransientReason(c.GetReason()) {
		t.Errorf("VMExited must be terminal")
	}
	if !strings.Contains(c.GetMessage(), "console tail") || !strings.Contains(c.GetMessage(), "openshell-testguest") {
		t.Errorf("crash message lacks the console tail: %q", c.GetMessage())
	}
	ts, _ := state.ReadTombstone(filepath.Join(dir, "sb", state.DirName(id)))
	if ts == nil || ts.Reason != vm.ReasonVMExited {
		t.Errorf("tombstone %+v, want reason VMExited", ts)
	}

	deleted, err := d.Delete(t.Context(), id, "")
	if err != nil || !deleted {
		t.Fatalf("Delete = %v, %v", deleted, err)
	}
	assertNoLeftovers(t, dir, rec, helpers)
}

// TestDeleteRunningLeavesNothing deletes a running VM.
func TestDeleteRunningLeavesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("boots real VMs")
	}
	_, image := vmFixture(t)
	gw := newGatewayStub(t)
	dir := shortDir(t)
	d := newTestDriver(t, testConfig(t, dir, gw.addr()))
	defer d.Close()
	id := create(t, d, image)
	waitFor(t, d, id, "Ready", ready)
	rec := record(t, dir, id)
	members := procstat.SessionMembers(rec.RunnerPID, rec.RunnerStart)
	// A symlink inside the sandbox dir must be removed, never followed.
	outside := filepath.Join(t.TempDir(), "keep")
	os.WriteFile(outside, []byte("x"), 0o600)
	os.Symlink(filepath.Dir(outside), filepath.Join(rec.Paths.Dir, "link"))
	deleted, err := d.Delete(t.Context(), id, "")
	if err != nil || !deleted {
		t.Fatalf("Delete = %v, %v", deleted, err)
	}
	if _, err := os.Stat(outside); err != nil {
		t.Errorf("Delete followed a symlink: %v", err)
	}
	assertNoLeftovers(t, dir, rec, members)
	if _, err := d.Get(t.Context(), id, ""); !errors.Is(err, drivers.ErrNotFound) {
		t.Errorf("Get after Delete: %v", err)
	}
}

func assertNoLeftovers(t *testing.T, stateDir string, rec *state.Record, pids []int) {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(stateDir, "sb"))
	for _, e := range ents {
		t.Errorf("sandbox directory left behind: %s", e.Name())
	}
	for _, p := range append(pids, rec.RunnerPID, rec.VMMPID) {
		if st, err := procstat.Read(p); err == nil && st.State != 'Z' && st.Session == rec.RunnerPID {
			t.Errorf("process %d of the sandbox still runs", p)
		}
	}
	if m := procstat.SessionMembers(rec.RunnerPID, rec.RunnerStart); len(m) > 0 {
		t.Errorf("runner session still has processes %v", m)
	}
}

// TestValidateCreate covers the VM-specific checks.
func TestValidateCreate(t *testing.T) {
	dir := shortDir(t)
	d, err := vm.New(vm.Config{StateDir: dir, GatewayEndpoint: "127.0.0.1:1", DefaultImage: "oci-layout:/nonexistent:latest", RunnerCommand: []string{"/bin/false"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, tc := range []struct {
		name string
		edit func(*computev1.DriverSandbox)
		ok   bool
	}{
		{"default", func(*computev1.DriverSandbox) {}, true},
		{"cpu and memory", func(sb *computev1.DriverSandbox) {
			sb.Spec.Template.Resources = &computev1.DriverResourceRequirements{CpuRequest: "1500m", MemoryLimit: "1Gi"}
		}, true},
		{"bad cpu", func(sb *computev1.DriverSandbox) {
			sb.Spec.Template.Resources = &computev1.DriverResourceRequirements{CpuLimit: "lots"}
		}, false},
		{"tiny memory", func(sb *computev1.DriverSandbox) {
			sb.Spec.Template.Resources = &computev1.DriverResourceRequirements{MemoryLimit: "16Mi"}
		}, false},
		{"gpu", func(sb *computev1.DriverSandbox) {
			n := uint32(1)
			sb.Spec.ResourceRequirements = &computev1.ResourceRequirements{Gpu: &computev1.GpuResourceRequirements{Count: &n}}
		}, false},
		{"bad image", func(sb *computev1.DriverSandbox) { sb.Spec.Template.Image = "oci-layout:" }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, name := drivertest.NewIDs()
			sb := drivertest.DefaultSandbox(id, name, "")
			tc.edit(sb)
			err := d.ValidateCreate(t.Context(), sb)
			if tc.ok && err != nil {
				t.Fatalf("ValidateCreate: %v", err)
			}
			if !tc.ok && !errors.Is(err, drivers.ErrInvalidArgument) {
				t.Fatalf("ValidateCreate = %v, want ErrInvalidArgument", err)
			}
		})
	}
}

// TestProvisioningFailureIsReported: an image that does not exist ends in a terminal
// condition, and Delete cleans up.
func TestProvisioningFailureIsReported(t *testing.T) {
	dir := shortDir(t)
	d, err := vm.New(vm.Config{StateDir: dir, GatewayEndpoint: "127.0.0.1:1", DefaultImage: "oci-layout:" + dir + "/missing:latest", RunnerCommand: []string{"/bin/false"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	id, name := drivertest.NewIDs()
	if err := d.Create(t.Context(), drivertest.DefaultSandbox(id, name, "")); err != nil {
		t.Fatal(err)
	}
	sb := waitFor(t, d, id, "ProvisioningFailed", func(sb *computev1.DriverSandbox) bool {
		return drivers.FindCondition(sb.GetStatus(), drivers.ConditionReady).GetReason() == vm.ReasonProvisioningFailed
	})
	if !strings.Contains(drivers.FindCondition(sb.GetStatus(), drivers.ConditionReady).GetMessage(), "missing") {
		t.Errorf("message does not name the image: %v", sb.GetStatus())
	}
	// A restarted driver still reports it.
	d.Close()
	d2, err := vm.New(vm.Config{StateDir: dir, GatewayEndpoint: "127.0.0.1:1", DefaultImage: "oci-layout:/x:latest", RunnerCommand: []string{"/bin/false"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	got, err := d2.Get(t.Context(), id, "")
	if err != nil || drivers.FindCondition(got.GetStatus(), drivers.ConditionReady).GetReason() != vm.ReasonProvisioningFailed {
		t.Fatalf("after restart: %v %v", got.GetStatus(), err)
	}
	if deleted, err := d2.Delete(t.Context(), id, ""); err != nil || !deleted {
		t.Fatalf("Delete = %v %v", deleted, err)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "sb")); len(ents) != 0 {
		t.Errorf("left behind: %v", ents)
	}
}

// TestConfigValidate names bad fields.
func TestConfigValidate(t *testing.T) {
	good := vm.Config{StateDir: "/tmp/x", GatewayEndpoint: "127.0.0.1:17670"}.WithDefaults()
	if err := good.Validate(); err != nil {
		t.Fatalf("good config: %v", err)
	}
	if good.CPUs != 2 || good.MemoryMiB != 2048 || good.DefaultImage != vm.DefaultImage || good.Accel != "auto" || good.Transport != "auto" {
		t.Errorf("defaults: %+v", good)
	}
	for _, tc := range []struct {
		field string
		edit  func(*vm.Config)
	}{
		{"state_dir", func(c *vm.Config) { c.StateDir = "relative" }},
		{"gateway_endpoint", func(c *vm.Config) { c.GatewayEndpoint = "" }},
		{"gateway_endpoint", func(c *vm.Config) { c.GatewayEndpoint = "nohostport" }},
		{"gateway_ca_file", func(c *vm.Config) { c.GatewayCAFile = "/nonexistent/ca.pem" }},
		{"cpus", func(c *vm.Config) { c.CPUs = -1 }},
		{"memory_mib", func(c *vm.Config) { c.MemoryMiB = 1 }},
		{"disk_size", func(c *vm.Config) { c.DiskSize = "1Mi" }},
		{"accel", func(c *vm.Config) { c.Accel = "hvf" }},
		{"vsock_transport", func(c *vm.Config) { c.Transport = "tcp" }},
	} {
		c := good
		tc.edit(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: Validate = %v, want an error naming it", tc.field, err)
		}
	}
	t.Setenv("XDG_STATE_HOME", "/xdg")
	if got := vm.DefaultStateDir(); got != "/xdg/openshell/vm" {
		t.Errorf("DefaultStateDir = %q", got)
	}
}

func TestDoctor(t *testing.T) {
	r := vm.Doctor(t.Context(), vm.Config{Accel: "tcg", DefaultImage: "oci-layout:/nonexistent/img:latest", SupervisorBinary: "/nonexistent/openshell-sandbox"})
	if r.Accel != "tcg" || r.Transport == "" {
		t.Errorf("doctor accel/transport: %+v", r)
	}
	var sawImage, sawSup bool
	for _, m := range r.Missing {
		sawImage = sawImage || strings.Contains(m.What, "/nonexistent/img")
		sawSup = sawSup || strings.Contains(m.What, "openshell-sandbox")
		if m.Fix == "" {
			t.Errorf("missing %q has no fix", m.What)
		}
	}
	if !sawImage || !sawSup || r.OK() {
		t.Errorf("doctor did not report the missing image and supervisor: %+v", r.Missing)
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err == nil && r.Kernel == "" {
		t.Logf("no guest kernel found: %+v", r.Missing)
	}
}

// TestRunnerKilled: kill -9 of the runner is reported (terminal) and its orphaned QEMU
// is ended, since nothing bridges or reaps it any more.
func TestRunnerKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("boots real VMs")
	}
	_, image := vmFixture(t)
	gw := newGatewayStub(t)
	dir := shortDir(t)
	d := newTestDriver(t, testConfig(t, dir, gw.addr()))
	defer d.Close()
	id := create(t, d, image)
	defer d.Delete(context.Background(), id, "")
	waitFor(t, d, id, "Ready", ready)
	rec := record(t, dir, id)
	if err := syscall.Kill(rec.RunnerPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	sb := waitFor(t, d, id, "VMExited", func(sb *computev1.DriverSandbox) bool {
		return drivers.FindCondition(sb.GetStatus(), drivers.ConditionReady).GetReason() == vm.ReasonVMExited
	})
	if msg := drivers.FindCondition(sb.GetStatus(), drivers.ConditionReady).GetMessage(); !strings.Contains(msg, "runner") {
		t.Errorf("message %q does not say the runner is gone", msg)
	}
	deadline := time.Now().Add(10 * time.Second)
	for state.SameProcess(rec.VMMPID, rec.VMMStart) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if state.SameProcess(rec.VMMPID, rec.VMMStart) {
		t.Errorf("QEMU %d outlived its killed runner", rec.VMMPID)
	}
	// Start boots it again from the same disk.
	if err := d.Start(t.Context(), id, ""); err != nil {
		t.Fatalf("Start after a runner crash: %v", err)
	}
	waitFor(t, d, id, "Ready after restart", ready)
}

// TestBaseImageBootsWithSupervisor boots the project's default image (built by
// scripts/build-base-image.sh) with the real openshell-sandbox as the guest's init: the
// supervisor fetches its bootstrap config (Ready) and dials the gateway port.
func TestBaseImageBootsWithSupervisor(t *testing.T) {
	if testing.Short() {
		t.Skip("boots real VMs")
	}
	vmFixture(t)
	_, err := os.Stat("/var/lib/openshell/images/base/index.json")
	testenv.Require(t, err == nil, "the base image is missing: run scripts/build-base-image.sh")
	sup := filepath.Join(fixtureDir, "openshell-sandbox")
	build := exec.Command("go", "build", "-o", sup, "github.com/openshell/openshell/cmd/openshell-sandbox")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build openshell-sandbox: %v\n%s", err, out)
	}
	gw := newGatewayStub(t)
	dir := shortDir(t)
	cfg := testConfig(t, dir, gw.addr())
	cfg.DefaultImage = vm.DefaultImage
	cfg.SupervisorBinary = sup
	d := newTestDriver(t, cfg)
	defer d.Close()
	id, name := drivertest.NewIDs()
	sb := drivertest.DefaultSandbox(id, name, "") // no image: the driver's default
	sb.Spec.Template.Resources = &computev1.DriverResourceRequirements{MemoryLimit: "512Mi"}
	if err := d.Create(t.Context(), sb); err != nil {
		t.Fatal(err)
	}
	defer d.Delete(context.Background(), id, "")
	waitFor(t, d, id, "Ready", ready)
	// The supervisor opens its gateway session through the runner's bridge (TLS-less
	// here, so it fails after connecting; the connection itself is what we check).
	deadline := time.Now().Add(vmTimeout)
	for {
		gw.mu.Lock()
		n := gw.accepted
		gw.mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the supervisor never reached the gateway port; console:\n%s", state.Tail(filepath.Join(record(t, dir, id).Paths.ConsoleLog), 3000))
		}
		time.Sleep(200 * time.Millisecond)
	}
	console := state.Tail(record(t, dir, id).Paths.ConsoleLog, 20000)
	if !strings.Contains(console, "root ready") {
		t.Errorf("console shows no guest init progress:\n%s", console)
	}
	// The guest kernel does not enforce module signatures, so init loads the modules
	// without them (the check is most of a load's cost under emulation); the VM
	// reached its supervisor, so every module it needed loaded that way.
	if !strings.Contains(console, "kernel modules loaded") || !strings.Contains(console, "signatures_checked=false") {
		t.Errorf("console shows no module load without signature checks:\n%s", console)
	}
}

// TestOneDriverPerStateDir: a second driver on the same state dir is refused while the
// first holds it, and gets it once the first closes.
func TestOneDriverPerStateDir(t *testing.T) {
	defer vm.SetLockWait(300 * time.Millisecond)()
	dir := shortDir(t)
	cfg := vm.Config{StateDir: dir, GatewayEndpoint: "127.0.0.1:1", RunnerCommand: []string{"/bin/false"}}
	d1, err := vm.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d2, err := vm.New(cfg, nil); err == nil || !strings.Contains(err.Error(), "another openshell-driver-vm") {
		if d2 != nil {
			d2.Close()
		}
		t.Fatalf("second driver on the same state dir: %v", err)
	}
	d1.Close()
	d3, err := vm.New(cfg, nil)
	if err != nil {
		t.Fatalf("after the first closed: %v", err)
	}
	d3.Close()
}

// runnersOf counts live runner processes serving the sandbox directory dir.
func runnersOf(dir string) int {
	n := 0
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 3 && args[1] == "runner" && strings.Contains(string(b), dir) {
			n++
		}
	}
	return n
}
