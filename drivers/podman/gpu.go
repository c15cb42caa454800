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
const DriverConfigGPUDevices = "gpu_devices"

// DefaultCDISpecDirs are Podman's own default CDI spec directories.
var DefaultCDISpecDirs = []string{"/etc/cdi", "/var/run/cdi"}

// gpuDeviceIDs resolves a sandbox's GPU request (a count, or device ids in
// driver_config gpu_devices) against the CDI specs the service reads, before
// anything is created: too many GPUs or an unlisted device is a clear error rather
// than a container that fails to start. nil: no GPU asked for.
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
	out, err := gpu.ReadCDI(d.cfg.CDISpecDirs).Resolve(gpu.DefaultCDIKind, count, ids)
	switch {
	case errors.Is(err, gpu.ErrInvalid):
		return nil, fmt.Errorf("sandbox %s: %v: %w", sb.GetId(), err, drivers.ErrInvalidArgument)
	case err != nil:
		return nil, fmt.Errorf("sandbox %s: %v (the podman driver reads the CDI specs in %v): %w", sb.GetId(), err, d.cfg.CDISpecDirs, drivers.ErrFailedPrecondition)
	}
	return out, nil
}
