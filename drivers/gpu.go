package drivers

import (
	"fmt"

	"github.com/openshell/openshell/api/computev1"
)

// DriverConfigGPUDevices is the driver_config key naming the devices a sandbox
// wants; what one entry names (a CDI device, a PCI address) is up to the driver.
const DriverConfigGPUDevices = "gpu_devices"

// GPURequest is the GPU part of a create request, as asked; each driver checks it
// against what its host has.
type GPURequest struct {
	// Count is resource_requirements.gpu.count; 0 when not given (then the
	// driver's default applies: as many as Devices names, or 1).
	Count int
	// Devices are the entries of driver_config gpu_devices, in order.
	Devices []string
}

// ReadGPURequest reads the GPU part of spec; nil when no GPU is asked for. items
// describes the list for its error (e.g. `PCI addresses, e.g. ["0000:01:00.0"]`)
// and item one entry (e.g. "PCI address"). Every error is bad input: callers add
// the sandbox id and their invalid-argument sentinel.
func ReadGPURequest(spec *computev1.DriverSandboxSpec, items, item string) (*GPURequest, error) {
	g := spec.GetResourceRequirements().GetGpu()
	var devs []string
	if v, ok := spec.GetTemplate().GetDriverConfig().GetFields()[DriverConfigGPUDevices]; ok {
		l := v.GetListValue()
		if l == nil {
			return nil, fmt.Errorf("driver_config %s must be a list of %s", DriverConfigGPUDevices, items)
		}
		for i, e := range l.GetValues() {
			s := e.GetStringValue()
			if s == "" {
				return nil, fmt.Errorf("driver_config %s[%d] is not a %s string", DriverConfigGPUDevices, i, item)
			}
			devs = append(devs, s)
		}
	}
	if g == nil && len(devs) == 0 {
		return nil, nil
	}
	r := &GPURequest{Devices: devs}
	if g != nil && g.Count != nil {
		if g.GetCount() == 0 {
			return nil, fmt.Errorf("resource_requirements.gpu.count 0: ask for at least 1 GPU, or for none by leaving --gpu out")
		}
		r.Count = int(g.GetCount())
	}
	return r, nil
}
