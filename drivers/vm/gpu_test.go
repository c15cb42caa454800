package vm_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/drivers/vm"
	"github.com/openshell/openshell/internal/gpu/gputest"
)

// GPU tests of the VM driver run on recorded sysfs trees (this host has no GPU and
// no IOMMU); the gputest kernel stand-in answers the bind/unbind writes. No VM boots:
// the image does not exist, so provisioning fails after the GPUs were taken, which
// is where these tests look.

type gpuHost struct {
	tree, sys, gpuState string
	k                   *gputest.Kernel
}

func newGPUHost(t *testing.T, tree string) *gpuHost {
	dir := gputest.CopyTree(t, tree)
	h := &gpuHost{tree: dir, sys: filepath.Join(dir, "sys"), gpuState: filepath.Join(dir, "gpustate")}
	h.k = gputest.NewKernel(h.sys)
	t.Cleanup(func() {
		if u := h.k.Unwanted(); len(u) > 0 {
			t.Errorf("writes the kernel would refuse: %v", u)
		}
	})
	return h
}

func (h *gpuHost) config(stateDir string, max int) vm.Config {
	return vm.Config{StateDir: stateDir, GatewayEndpoint: "127.0.0.1:1", DefaultImage: "oci-layout:" + stateDir + "/missing:latest",
		RunnerCommand: []string{"/bin/false"}, GPUSysfs: h.sys, GPUStateDir: h.gpuState, GPUWrite: h.k.Write, GPUMaxSandboxes: max}
}

// onVFIO lists the functions of the tree now on vfio-pci.
func (h *gpuHost) onVFIO(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(h.sys, "bus", "pci", "devices"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(h.sys, "bus", "pci", "devices", e.Name(), "driver")); err == nil && filepath.Base(l) == "vfio-pci" {
			out = append(out, e.Name())
		}
	}
	return out
}

func gpuSandbox(count *uint32, devices ...string) *computev1.DriverSandbox {
	id, name := drivertest.NewIDs()
	sb := drivertest.DefaultSandbox(id, name, "")
	if count != nil || len(devices) == 0 {
		sb.Spec.ResourceRequirements = &computev1.ResourceRequirements{Gpu: &computev1.GpuResourceRequirements{Count: count}}
	}
	if len(devices) > 0 {
		l := []any{}
		for _, d := range devices {
			l = append(l, d)
		}
		s, _ := structpb.NewStruct(map[string]any{vm.DriverConfigGPUDevices: l})
		sb.Spec.Template.DriverConfig = s
	}
	return sb
}

func u32(n uint32) *uint32 { return &n }

// 20 sandboxes created at once on the 8-GPU host: 8 get a GPU each, 12 are refused
// before anything is made, `get` shows the devices, delete puts every one back.
func TestGPUCreateExclusive(t *testing.T) {
	h := newGPUHost(t, "hgx8")
	d, err := vm.New(h.config(shortDir(t), 0), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	const n = 20
	var wg sync.WaitGroup
	errs := make([]error, n)
	sbs := make([]*computev1.DriverSandbox, n)
	for i := range n {
		sbs[i] = gpuSandbox(nil)
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = d.Create(t.Context(), sbs[i]) }()
	}
	wg.Wait()
	seen := map[string]string{}
	var created []string
	for i, err := range errs {
		if err != nil {
			if !errors.Is(err, drivers.ErrFailedPrecondition) || !strings.Contains(err.Error(), "0 free") {
				t.Errorf("create %d: %v", i, err)
			}
			if _, gerr := d.Get(t.Context(), sbs[i].Id, ""); !errors.Is(gerr, drivers.ErrNotFound) {
				t.Errorf("refused sandbox %d exists: %v", i, gerr)
			}
			continue
		}
		created = append(created, sbs[i].Id)
		sb, err := d.Get(t.Context(), sbs[i].Id, "")
		if err != nil {
			t.Fatal(err)
		}
		c := drivers.FindCondition(sb.GetStatus(), vm.ConditionGPU)
		if c == nil || c.GetStatus() != drivers.StatusTrue {
			t.Fatalf("sandbox %d shows no GPU condition: %v", i, sb.GetStatus())
		}
		dev := strings.Fields(c.GetMessage())[0]
		if other, dup := seen[dev]; dup {
			t.Errorf("%s given to %s and %s", dev, other, sbs[i].Id)
		}
		seen[dev] = sbs[i].Id
	}
	if len(created) != 8 || len(h.onVFIO(t)) != 8 {
		t.Fatalf("%d created, %d functions on vfio-pci; want 8 and 8", len(created), len(h.onVFIO(t)))
	}
	for _, id := range created {
		if _, err := d.Delete(t.Context(), id, ""); err != nil {
			t.Fatal(err)
		}
	}
	if v := h.onVFIO(t); len(v) != 0 {
		t.Errorf("after delete still on vfio-pci: %v", v)
	}
}

func TestGPUBadRequests(t *testing.T) {
	for _, tc := range []struct {
		name, tree string
		sb         *computev1.DriverSandbox
		is         error
		says       []string
	}{
		{"count 0", "hgx8", gpuSandbox(u32(0)), drivers.ErrInvalidArgument, []string{"resource_requirements.gpu.count 0"}},
		{"more than the host has", "hgx8", gpuSandbox(u32(9)), drivers.ErrInvalidArgument, []string{"gpu count 9", "8 GPU(s)"}},
		{"unknown BDF", "hgx8", gpuSandbox(nil, "0000:99:00.0"), drivers.ErrInvalidArgument, []string{"gpu device 0000:99:00.0", "no PCI device"}},
		{"not a GPU", "hgx8", gpuSandbox(nil, "0000:05:00.0"), drivers.ErrInvalidArgument, []string{"gpu device 0000:05:00.0", "InfiniBand", "not a GPU"}},
		{"malformed BDF", "hgx8", gpuSandbox(nil, "gpu0"), drivers.ErrInvalidArgument, []string{"gpu device", "not a PCI address"}},
		{"count and devices disagree", "hgx8", gpuSandbox(u32(2), "0000:03:00.0"), drivers.ErrInvalidArgument, []string{"agree"}},
		{"no IOMMU (H200 host)", "h200", gpuSandbox(nil), drivers.ErrFailedPrecondition, []string{"no IOMMU", "intel_iommu=on"}},
		{"group shared with a NIC", "shared-nic", gpuSandbox(nil, "0000:03:00.0"), drivers.ErrFailedPrecondition, []string{"0000:04:00.0", "not a bridge"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newGPUHost(t, tc.tree)
			d, err := vm.New(h.config(shortDir(t), 0), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			err = d.Create(t.Context(), tc.sb)
			if !errors.Is(err, tc.is) {
				t.Fatalf("Create = %v, want %v", err, tc.is)
			}
			for _, s := range tc.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("%q does not say %q", err, s)
				}
			}
			if l := h.k.Log(); len(l) != 0 {
				t.Errorf("sysfs written for a refused create: %v", l)
			}
		})
	}
}

// The driver stops (as in a crash) after the GPUs moved to vfio-pci and before any VM
// ran; the next start puts them back, and the sandbox no longer shows them.
func TestGPURecoveredAtDriverStart(t *testing.T) {
	h := newGPUHost(t, "hgx8")
	dir := shortDir(t)
	d, err := vm.New(h.config(dir, 0), nil)
	if err != nil {
		t.Fatal(err)
	}
	sb := gpuSandbox(u32(2))
	if err := d.Create(t.Context(), sb); err != nil {
		t.Fatal(err)
	}
	if v := h.onVFIO(t); len(v) != 2 {
		t.Fatalf("on vfio-pci: %v", v)
	}
	d.Close()
	d2, err := vm.New(h.config(dir, 0), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if v := h.onVFIO(t); len(v) != 0 {
		t.Errorf("after the driver's restart still on vfio-pci: %v", v)
	}
	got, err := d2.Get(t.Context(), sb.Id, "")
	if err != nil {
		t.Fatal(err)
	}
	if c := drivers.FindCondition(got.GetStatus(), vm.ConditionGPU); c != nil {
		t.Errorf("GPU condition after recovery: %v", c)
	}
	b, err := os.ReadFile(filepath.Join(h.gpuState, "journal.json"))
	if err != nil {
		t.Fatal(err)
	}
	var j struct{ Entries []any }
	if json.Unmarshal(b, &j); len(j.Entries) != 0 {
		t.Errorf("journal keeps %s", b)
	}
}

func TestGPUSandboxLimit(t *testing.T) {
	h := newGPUHost(t, "hgx8")
	d, err := vm.New(h.config(shortDir(t), 2), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for range 2 {
		if err := d.Create(t.Context(), gpuSandbox(u32(1))); err != nil {
			t.Fatal(err)
		}
	}
	err = d.Create(t.Context(), gpuSandbox(u32(1)))
	if !errors.Is(err, drivers.ErrFailedPrecondition) || !strings.Contains(err.Error(), "limit of 2 GPU sandboxes") {
		t.Fatalf("third GPU sandbox: %v", err)
	}
	if _, err := vm.New(vm.Config{StateDir: shortDir(t), GatewayEndpoint: "127.0.0.1:1", GPUMaxSandboxes: -1}, nil); err == nil || !strings.Contains(err.Error(), "gpu_max_sandboxes") {
		t.Errorf("negative limit: %v", err)
	}
}

const envGPUCrash = "OPENSHELL_TEST_GPU_CRASH_DIR"

// TestGPUDriverCrashHelper is the driver process TestGPUDriverKilledBeforeQEMU kills:
// it creates a GPU sandbox (the GPUs move to vfio-pci), says so, and waits.
func TestGPUDriverCrashHelper(t *testing.T) {
	dir := os.Getenv(envGPUCrash)
	if dir == "" {
		t.Skip("helper process of TestGPUDriverKilledBeforeQEMU")
	}
	h := &gpuHost{tree: dir, sys: filepath.Join(dir, "sys"), gpuState: filepath.Join(dir, "gpustate")}
	h.k = gputest.NewKernel(h.sys)
	d, err := vm.New(h.config(filepath.Join(dir, "vm"), 0), nil)
	if err != nil {
		t.Fatal(err)
	}
	sb := gpuSandbox(u32(2))
	if err := d.Create(t.Context(), sb); err != nil {
		t.Fatal(err)
	}
	os.Stdout.WriteString("BOUND " + sb.Id + "\n")
	time.Sleep(time.Hour)
}

// The driver process is killed (SIGKILL) after the GPUs moved to vfio-pci and before
// any QEMU started; the next driver start on the same host puts them back.
func TestGPUDriverKilledBeforeQEMU(t *testing.T) {
	h := newGPUHost(t, "hgx8")
	vmDir, err := os.MkdirTemp("", "osvmk-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(vmDir) })
	if err := os.Symlink(vmDir, filepath.Join(h.tree, "vm")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestGPUDriverCrashHelper$", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), envGPUCrash+"="+h.tree)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if err != nil || !strings.HasPrefix(line, "BOUND ") {
		t.Fatalf("helper: %q %v", line, err)
	}
	if v := h.onVFIO(t); len(v) != 2 {
		t.Fatalf("before the restart on vfio-pci: %v, want 2 GPUs", v)
	}
	d, err := vm.New(h.config(filepath.Join(h.tree, "vm"), 0), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if v := h.onVFIO(t); len(v) != 0 {
		t.Errorf("after the restart still on vfio-pci: %v", v)
	}
	// The sandbox survives (failed provisioning or interrupted), without GPUs.
	id := strings.TrimSpace(strings.TrimPrefix(line, "BOUND "))
	if sb, err := d.Get(t.Context(), id, ""); err != nil || drivers.FindCondition(sb.GetStatus(), vm.ConditionGPU) != nil {
		t.Errorf("sandbox after restart: %v %v", sb.GetStatus(), err)
	}
	if _, err := d.Delete(t.Context(), id, ""); err != nil {
		t.Fatal(err)
	}
}
