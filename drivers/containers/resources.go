package containers

import (
	"cmp"
	"fmt"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
)

// Resources are a sandbox's limits as a container engine takes them (0: none).
type Resources struct {
	NanoCPUs  int64
	Memory    int64 // bytes
	MemoryReq int64 // a soft reservation, never above Memory
}

// ReadResources resolves r for an engine that has limits, not requests: the limit is
// the sandbox's limit, else its request, else the driver default (defCPU, defMemory);
// a memory request becomes a soft reservation. Errors say what is wrong, without the
// sandbox id or a sentinel: the request is invalid.
func ReadResources(r *computev1.DriverResourceRequirements, defCPU, defMemory string, minMemory int64) (Resources, error) {
	var out Resources
	var err error
	cpu, mem, memReq := defCPU, defMemory, ""
	if r != nil {
		cpu = cmp.Or(r.GetCpuLimit(), r.GetCpuRequest(), cpu)
		mem = cmp.Or(r.GetMemoryLimit(), r.GetMemoryRequest(), mem)
		memReq = r.GetMemoryRequest()
	}
	if cpu != "" {
		if out.NanoCPUs, err = drivers.ParseCPU(cpu); err != nil {
			return out, fmt.Errorf("cpu: %v", err)
		}
		if out.NanoCPUs < 10_000_000 {
			return out, fmt.Errorf("cpu %q is below the minimum of 10m", cpu)
		}
	}
	if mem != "" {
		if out.Memory, err = drivers.ParseMemory(mem); err != nil {
			return out, fmt.Errorf("memory: %v", err)
		}
		if out.Memory < minMemory {
			return out, fmt.Errorf("memory %q (%d bytes) is below the minimum of %d MiB", mem, out.Memory, minMemory>>20)
		}
	}
	if memReq != "" {
		if out.MemoryReq, err = drivers.ParseMemory(memReq); err != nil {
			return out, fmt.Errorf("memory request: %v", err)
		}
		if out.MemoryReq > out.Memory {
			out.MemoryReq = 0 // a reservation above the limit is meaningless
		}
	}
	return out, nil
}
