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
const DriverConfigGPUDevices = "gpu_devices"

// gpuDeviceIDs resolves a sandbox's GPU request against the CDI specs in the
// directories the daemon reports, before anything is created: a count larger than
// what the specs list, or a device they do not list, is a clear error rather than a
// container that fails to start. nil: no GPU asked for.
func (d *Driver) gpuDeviceIDs(sb *computev1.DriverSandbox) ([]string, error) {
	spec := sb.GetSpec()
	g := spec.GetResourceRequirements().GetGpu()
	var ids []string
	if v, ok := spec.GetTemplate().GetDriverConfig().GetFields()[DriverConfigGPUDevices]; ok {
		l := v.GetListValue()
		if l == nil {
			return nil, fmt.Errorf("sandbox %s: driver_config %s must be a list of CDI device ids, e.g. [\"0\"] or [\"nvidia.com/gpu=0\"]: %w", sb.GetId(), DriverConfigGPUDevices, drivers.ErrInvalidArgument)
		}
		for i, e := range l.GetValues() {
			s := e.GetStringValue()
			if s == "" {
				return nil, fmt.Errorf("sandbox %s: driver_config %s[%d] is not a device id string: %w", sb.GetId(), DriverConfigGPUDevices, i, drivers.ErrInvalidArgument)
			}
			ids = append(ids, s)
		}
	}
	if g == nil && len(ids) == 0 {
		return nil, nil
	}
	count := 0 // with ids: as many as named
	switch {
	case g != nil && g.Count != nil && g.GetCount() == 0:
		return nil, fmt.Errorf("sandbox %s: resource_requirements.gpu.count 0: ask for at least 1 GPU, or for none by leaving --gpu out: %w", sb.GetId(), drivers.ErrInvalidArgument)
	case g != nil && g.Count != nil:
		count = int(g.GetCount())
	case len(ids) == 0:
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
