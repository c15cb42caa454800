package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/vm/internal/runner"
	"github.com/openshell/openshell/drivers/vm/internal/state"
	"github.com/openshell/openshell/internal/atomicfile"
	"github.com/openshell/openshell/internal/gpu"
	"github.com/openshell/openshell/vmm/backends"
)

// GPU passthrough: a sandbox asking for GPUs (resource_requirements.gpu.count, or
// the addresses in driver_config gpu_devices) gets them at create, exclusively across
// every driver of the host; they move to vfio-pci and QEMU (the only backend that
// passes devices through) gets them. Delete puts them back on their drivers. When the
// driver starts, devices of sandboxes whose VM is not running go back too (a crash
// between binding and QEMU's start); starting such a sandbox takes them again.

// DriverConfigGPUDevices is the driver_config key naming the GPUs (PCI addresses).
const DriverConfigGPUDevices = drivers.DriverConfigGPUDevices

// ConditionGPU is the condition listing a sandbox's passed-through devices.
const ConditionGPU = "GPU"

// gpuFile, in the sandbox dir, records which GPUs the sandbox holds (to take the same
// ones again when it starts after a driver restart).
const gpuFile = "gpu.json"

type gpuRecord struct {
	GPUs []string `json:"gpus"`
}

// gpuHeld is what each sandbox holds, for Get.
type gpuHeld struct {
	mu sync.Mutex
	m  map[string][]string
}

func (h *gpuHeld) set(id string, fns []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.m == nil {
		h.m = map[string][]string{}
	}
	if len(fns) == 0 {
		delete(h.m, id)
		return
	}
	h.m[id] = fns
}

func (h *gpuHeld) get(id string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.m[id]
}

// gpuCondition is the GPU condition of a sandbox holding devices (nil otherwise).
func (d *Driver) gpuCondition(id, ts string) *computev1.DriverCondition {
	fns := d.gpus.get(id)
	if len(fns) == 0 {
		return nil
	}
	return &computev1.DriverCondition{Type: ConditionGPU, Status: drivers.StatusTrue, Reason: "Allocated",
		Message: strings.Join(fns, ", ") + " (vfio-pci)", LastTransitionTime: ts}
}

func (d *Driver) gpuManager() *gpu.Manager {
	return gpu.New(gpu.Config{Sysfs: d.cfg.GPUSysfs, StateDir: d.cfg.GPUStateDir, Write: d.cfg.GPUWrite,
		Scope: d.cfg.StateDir, Log: d.log})
}

// gpuRequest reads the GPU part of a create request (nil: none asked for) and checks
// that this host could ever meet it.
func (d *Driver) gpuRequest(sb *computev1.DriverSandbox) (*gpu.Request, error) {
	req, err := drivers.ReadGPURequest(sb.GetSpec(), `PCI addresses, e.g. ["0000:01:00.0"]`, "PCI address")
	if err != nil {
		return nil, fmt.Errorf("%v: %w", err, gpu.ErrInvalid)
	}
	if req == nil {
		return nil, nil
	}
	devs := req.Devices
	r := &gpu.Request{Count: 1, Devices: devs, MaxSandboxes: d.cfg.GPUMaxSandboxes}
	switch {
	case req.Count > 0:
		r.Count = req.Count
	case len(devs) > 0:
		r.Count = len(devs)
	}
	if len(devs) > 0 && r.Count != len(devs) {
		return nil, fmt.Errorf("resource_requirements.gpu.count %d but %d gpu_devices named: give one or make them agree: %w", r.Count, len(devs), gpu.ErrInvalid)
	}
	inv, err := d.gpuManager().Inventory()
	if err != nil {
		return nil, fmt.Errorf("GPU inventory: %v: %w", err, gpu.ErrUnavailable)
	}
	if err := inv.Check(*r); err != nil {
		return nil, err
	}
	return r, nil
}

// gpuErr maps the gpu package's errors onto the driver contract's.
func gpuErr(id string, err error) error {
	switch {
	case errors.Is(err, gpu.ErrInvalid):
		return fmt.Errorf("vm sandbox %q: %v: %w", id, err, drivers.ErrInvalidArgument)
	case errors.Is(err, gpu.ErrUnavailable):
		return fmt.Errorf("vm sandbox %q: %v: %w", id, err, drivers.ErrFailedPrecondition)
	}
	return fmt.Errorf("vm sandbox %q: GPUs: %w", id, err)
}

// acquireGPUs gives s the GPUs r asks for (nothing when r is nil).
func (d *Driver) acquireGPUs(s *sandbox, r *gpu.Request) error {
	if r == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(d.ctx, 2*time.Minute)
	defer cancel()
	m := d.gpuManager()
	a, err := m.Allocate(ctx, s.id, *r)
	if err != nil {
		return gpuErr(s.id, err)
	}
	b, _ := json.Marshal(gpuRecord{GPUs: a.GPUs()})
	if err := atomicfile.WriteFile(filepath.Join(s.paths.Dir, gpuFile), b, 0o600); err != nil {
		return errors.Join(fmt.Errorf("vm sandbox %q: record GPUs: %w", s.id, err), m.Release(ctx, s.id))
	}
	d.gpus.set(s.id, a.BDFs())
	d.log.Info("GPUs allocated", "sandbox_id", s.id, "devices", a.BDFs())
	return nil
}

// reacquireGPUs takes again, before a start, the GPUs s held (they went back to
// their drivers when the driver restarted while the VM was down), and puts them in
// the runner spec.
func (d *Driver) reacquireGPUs(ctx context.Context, s *sandbox, rs *runner.Spec) error {
	b, err := os.ReadFile(filepath.Join(s.paths.Dir, gpuFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var rec gpuRecord
	if err := json.Unmarshal(b, &rec); err != nil || len(rec.GPUs) == 0 {
		return fmt.Errorf("vm sandbox %q: %s: unreadable (%v): delete and create the sandbox again", s.id, gpuFile, err)
	}
	a, err := d.gpuManager().Allocate(ctx, s.id, gpu.Request{Devices: rec.GPUs, MaxSandboxes: d.cfg.GPUMaxSandboxes})
	if err != nil {
		return gpuErr(s.id, err)
	}
	d.gpus.set(s.id, a.BDFs())
	setMachineGPUs(rs, a.BDFs())
	return nil
}

// setMachineGPUs puts the devices in the runner spec; only QEMU passes devices through.
func setMachineGPUs(rs *runner.Spec, bdfs []string) {
	rs.Machine.PCIDevices = bdfs
	if len(bdfs) > 0 {
		rs.Machine.Backend = backends.QEMU
	}
}

// releaseGPUs puts s's devices back on their drivers (its VM is gone).
func (d *Driver) releaseGPUs(ctx context.Context, id string) error {
	if err := d.gpuManager().Release(ctx, id); err != nil {
		return fmt.Errorf("vm sandbox %q: put its GPUs back on their drivers: %w", id, err)
	}
	d.gpus.set(id, nil)
	return nil
}

// recoverGPUs runs when the driver starts, before adoption: devices of this driver's
// sandboxes whose VM is not running (deleted, crashed, the driver killed between
// binding and QEMU's start, the host rebooted) go back to their drivers.
func (d *Driver) recoverGPUs() {
	m := d.gpuManager()
	var kept []string
	ctx, cancel := context.WithTimeout(d.ctx, time.Minute)
	defer cancel()
	back, err := m.Recover(ctx, func(owner string) bool {
		rec, err := state.Load(d.sandboxDir(owner))
		alive := err == nil && !hostRebooted(rec, d.bootID) && rec.RunnerPID != 0 && state.SameProcess(rec.RunnerPID, rec.RunnerStart)
		if alive {
			kept = append(kept, owner)
		}
		return alive
	})
	if len(back) > 0 {
		d.log.Info("GPU devices of sandboxes whose VM is not running are back on their drivers", "devices", back)
	}
	if err != nil {
		d.log.Error("putting GPU devices back on their drivers", "err", err)
	}
	for _, id := range kept {
		if a, ok, _ := m.Held(id); ok {
			d.gpus.set(id, a.BDFs())
		}
	}
}
