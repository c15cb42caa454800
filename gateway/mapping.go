package gateway

import (
	"fmt"
	"maps"
	"strconv"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/gateway/validation"
)

// toDriverSandbox maps the public sandbox to what the driver receives (wire protocol
// §4.3): ids and spec fields copied, resources Struct → typed requirements, a
// gateway-built platform_config, and only the active driver's driver_config object.
func toDriverSandbox(sb *openshellv1.Sandbox, driverName, token string) (*computev1.DriverSandbox, error) {
	spec := sb.GetSpec()
	ds := &computev1.DriverSandboxSpec{
		LogLevel:     spec.GetLogLevel(),
		Environment:  maps.Clone(spec.GetEnvironment()),
		Command:      append([]string(nil), spec.GetCommand()...),
		Tty:          spec.GetTty(),
		SandboxToken: token,
	}
	if gpu := spec.GetResourceRequirements().GetGpu(); gpu != nil {
		g := &computev1.GpuResourceRequirements{}
		if gpu.Count != nil {
			c := gpu.GetCount()
			g.Count = &c
		}
		ds.ResourceRequirements = &computev1.ResourceRequirements{Gpu: g}
	}
	t := spec.GetTemplate()
	dt := &computev1.DriverSandboxTemplate{
		Image:           t.GetImage(),
		AgentSocketPath: t.GetAgentSocket(),
		Labels:          maps.Clone(t.GetLabels()),
		Environment:     maps.Clone(t.GetEnvironment()),
	}
	res, raw := splitResources(t.GetResources())
	dt.Resources = res
	pc := map[string]any{}
	if t.GetRuntimeClassName() != "" {
		pc["runtime_class_name"] = t.GetRuntimeClassName()
	}
	if len(t.GetAnnotations()) > 0 {
		ann := map[string]any{}
		for k, v := range t.GetAnnotations() {
			ann[k] = v
		}
		pc["annotations"] = ann
	}
	if t != nil && t.UserNamespaces != nil {
		pc["host_users"] = !t.GetUserNamespaces()
	}
	if len(raw) > 0 {
		pc["resources_raw"] = raw
	}
	if len(pc) > 0 {
		s, err := structpb.NewStruct(pc)
		if err != nil {
			return nil, fmt.Errorf("sandbox %s: platform config: %w", sb.GetMetadata().GetName(), err)
		}
		dt.PlatformConfig = s
	}
	if v, ok := t.GetDriverConfig().GetFields()[driverName]; ok {
		inner := v.GetStructValue()
		if inner == nil {
			return nil, fmt.Errorf("spec.template.driver_config.%s must be an object: %w", driverName, validation.ErrInvalid)
		}
		dt.DriverConfig = inner
	}
	ds.Template = dt
	return &computev1.DriverSandbox{
		Id:        sb.GetMetadata().GetId(),
		Name:      sb.GetMetadata().GetName(),
		Workspace: sb.GetMetadata().GetWorkspace(),
		Spec:      ds,
	}, nil
}

// splitResources extracts requests/limits cpu and memory; everything else goes to
// resources_raw. The typed message is nil when all four are empty.
func splitResources(s *structpb.Struct) (*computev1.DriverResourceRequirements, map[string]any) {
	if s == nil {
		return nil, nil
	}
	raw := map[string]any{}
	r := &computev1.DriverResourceRequirements{}
	for sect, v := range s.GetFields() {
		st := v.GetStructValue()
		if (sect != "requests" && sect != "limits") || st == nil {
			raw[sect] = v.AsInterface()
			continue
		}
		rest := map[string]any{}
		for k, q := range st.GetFields() {
			val := quantity(q)
			switch {
			case sect == "requests" && k == "cpu":
				r.CpuRequest = val
			case sect == "requests" && k == "memory":
				r.MemoryRequest = val
			case sect == "limits" && k == "cpu":
				r.CpuLimit = val
			case sect == "limits" && k == "memory":
				r.MemoryLimit = val
			default:
				rest[k] = q.AsInterface()
			}
		}
		if len(rest) > 0 {
			raw[sect] = rest
		}
	}
	if r.CpuRequest == "" && r.CpuLimit == "" && r.MemoryRequest == "" && r.MemoryLimit == "" {
		r = nil
	}
	return r, raw
}

func quantity(v *structpb.Value) string {
	switch k := v.GetKind().(type) {
	case *structpb.Value_StringValue:
		return k.StringValue
	case *structpb.Value_NumberValue:
		return strconv.FormatFloat(k.NumberValue, 'f', -1, 64)
	}
	return ""
}
