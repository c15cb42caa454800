package podman

import (
	"errors"
	"fmt"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/internal/gpu"
)

// DriverConfigGPUDevices is the driver_config key naming the CDI devices a sandbox
// wants: a device name of the default kind ("0", a GPU UUID) or KIND=NAME.
const DriverConfigGPUDevices = drivers.DriverConfigGPUDevices

// DefaultCDISpecDirs are Podman's own default CDI spec directories.
var DefaultCDISpecDirs = []string{"/etc/cdi", "/var/run/cdi"}

// gpuDeviceIDs resolves a sandbox's GPU request (a count, or device ids in
// driver_config gpu_devices) against the CDI specs the service reads, before
// anything is created: too many GPUs or an unlisted device is a clear error rather
// than a container that fails to start. nil: no GPU asked for.
func (d *Driver) gpuDeviceIDs(sb *computev1.DriverSandbox) ([]string, error) {
	r, err := drivers.ReadGPURequest(sb.GetSpec(), `CDI device ids, e.g. ["0"] or ["nvidia.com/gpu=0"]`, "device id")
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %v: %w", sb.GetId(), err, drivers.ErrInvalidArgument)
	}
	if r == nil {
		return nil, nil
	}
	count, ids := r.Count, r.Devices // count 0 with ids: as many as named
	if count == 0 && len(ids) == 0 {
		count = 1
	}
	out, err := gpu.ReadCDI(d.cfg.CDISpecDirs).Resolve(gpu.DefaultCDIKind, count, ids)
	switch {
	case errors.Is(err, gpu.ErrInvalid):
		return nil, fmt.Errorf("sandbox %s: %v: %w", sb.GetId(), err, drivers.ErrInvalidArgument)
	case err != nil:
		return nil, fmt.Errorf("sandbox %s: %v (the podman driver reads the CDI specs in %v): %w", sb.GetId(), err, d.cfg.CDISpecDirs, drivers.ErrFailedPrecondition)
	}
	return out, nil
}
