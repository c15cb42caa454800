package docker

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

// gpuDeviceIDs resolves a sandbox's GPU request against the CDI specs in the
// directories the daemon reports, before anything is created: a count larger than
// what the specs list, or a device they do not list, is a clear error rather than a
// container that fails to start. nil: no GPU asked for.
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
	if len(d.cdiDirs) == 0 {
		return nil, fmt.Errorf("sandbox %s: GPU requested but the Docker daemon has no CDI spec directories; configure CDI (generate a spec with `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml` and enable the daemon's CDI feature), or create the sandbox without --gpu: %w",
			sb.GetId(), drivers.ErrFailedPrecondition)
	}
	out, err := gpu.ReadCDI(d.cdiDirs).Resolve(gpu.DefaultCDIKind, count, ids)
	switch {
	case errors.Is(err, gpu.ErrInvalid):
		return nil, fmt.Errorf("sandbox %s: %v: %w", sb.GetId(), err, drivers.ErrInvalidArgument)
	case err != nil:
		return nil, fmt.Errorf("sandbox %s: %v: %w", sb.GetId(), err, drivers.ErrFailedPrecondition)
	}
	return out, nil
}
