// Package api_test pins wire facts of the generated descriptors so that an
// edit to api/proto/*.proto that would break upstream compatibility fails here.
package api_test

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/api/optionsv1"
	"github.com/openshell/openshell/api/sandboxv1"
)

func TestFullMethodNames(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{openshellv1.OpenShell_Health_FullMethodName, "/openshell.v1.OpenShell/Health"},
		{openshellv1.OpenShell_ConnectSupervisor_FullMethodName, "/openshell.v1.OpenShell/ConnectSupervisor"},
		{openshellv1.OpenShell_GetSandboxConfig_FullMethodName, "/openshell.v1.OpenShell/GetSandboxConfig"},
		{computev1.ComputeDriver_WatchSandboxes_FullMethodName, "/openshell.compute.v1.ComputeDriver/WatchSandboxes"},
		{computev1.ComputeDriver_GetGatewayListenerRequirements_FullMethodName, "/openshell.compute.v1.ComputeDriver/GetGatewayListenerRequirements"},
	} {
		if tc.got != tc.want {
			t.Errorf("method name %q, want %q", tc.got, tc.want)
		}
	}
}

func service(t *testing.T, name protoreflect.FullName) protoreflect.ServiceDescriptor {
	t.Helper()
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(name)
	if err != nil {
		t.Fatalf("service %s: %v", name, err)
	}
	return d.(protoreflect.ServiceDescriptor)
}

func TestOpenShellServiceSubset(t *testing.T) {
	type rpc struct {
		in, out        protoreflect.FullName
		cstream, sstrm bool
		mode, scope    string
	}
	want := map[string]rpc{
		"Health":                 {"openshell.v1.HealthRequest", "openshell.v1.HealthResponse", false, false, "unauthenticated", ""},
		"CreateSandbox":          {"openshell.v1.CreateSandboxRequest", "openshell.v1.SandboxResponse", false, false, "bearer", "sandbox:write"},
		"GetSandbox":             {"openshell.v1.GetSandboxRequest", "openshell.v1.SandboxResponse", false, false, "bearer", "sandbox:read"},
		"ListSandboxes":          {"openshell.v1.ListSandboxesRequest", "openshell.v1.ListSandboxesResponse", false, false, "bearer", "sandbox:read"},
		"DeleteSandbox":          {"openshell.v1.DeleteSandboxRequest", "openshell.v1.DeleteSandboxResponse", false, false, "bearer", "sandbox:write"},
		"StopSandbox":            {"openshell.v1.StopSandboxRequest", "openshell.v1.SandboxResponse", false, false, "bearer", "sandbox:write"},
		"StartSandbox":           {"openshell.v1.StartSandboxRequest", "openshell.v1.SandboxResponse", false, false, "bearer", "sandbox:write"},
		"WatchSandbox":           {"openshell.v1.WatchSandboxRequest", "openshell.v1.SandboxStreamEvent", false, true, "bearer", "sandbox:read"},
		"ExecSandbox":            {"openshell.v1.ExecSandboxRequest", "openshell.v1.ExecSandboxEvent", false, true, "bearer", "sandbox:write"},
		"ExecSandboxInteractive": {"openshell.v1.ExecSandboxInput", "openshell.v1.ExecSandboxEvent", true, true, "bearer", "sandbox:write"},
		"CreateSshSession":       {"openshell.v1.CreateSshSessionRequest", "openshell.v1.CreateSshSessionResponse", false, false, "bearer", "sandbox:write"},
		"RevokeSshSession":       {"openshell.v1.RevokeSshSessionRequest", "openshell.v1.RevokeSshSessionResponse", false, false, "bearer", "sandbox:write"},
		"ForwardTcp":             {"openshell.v1.TcpForwardFrame", "openshell.v1.TcpForwardFrame", true, true, "bearer", "sandbox:write"},
		"GetSandboxLogs":         {"openshell.v1.GetSandboxLogsRequest", "openshell.v1.GetSandboxLogsResponse", false, false, "bearer", "sandbox:read"},
		"ConnectSupervisor":      {"openshell.v1.SupervisorMessage", "openshell.v1.GatewayMessage", true, true, "sandbox", ""},
		"RelayStream":            {"openshell.v1.RelayFrame", "openshell.v1.RelayFrame", true, true, "sandbox", ""},
		"ReportMainProcessExit":  {"openshell.v1.ReportMainProcessExitRequest", "openshell.v1.ReportMainProcessExitResponse", false, false, "sandbox", ""},
		"PushSandboxLogs":        {"openshell.v1.PushSandboxLogsRequest", "openshell.v1.PushSandboxLogsResponse", true, false, "sandbox", ""},
		"GetSandboxConfig":       {"openshell.sandbox.v1.GetSandboxConfigRequest", "openshell.sandbox.v1.GetSandboxConfigResponse", false, false, "dual", "config:read"},
	}
	svc := service(t, "openshell.v1.OpenShell")
	if got := svc.ParentFile().Path(); got != "openshell.proto" {
		t.Errorf("OpenShell defined in %q, want flat path openshell.proto", got)
	}
	// The full service (67 RPCs) is compared with the tables in table_test.go; this
	// pins the subset every component codes against.
	for name, w := range want {
		m := svc.Methods().ByName(protoreflect.Name(name))
		if m == nil {
			t.Errorf("RPC %s missing", name)
			continue
		}
		if m.Input().FullName() != w.in || m.Output().FullName() != w.out {
			t.Errorf("%s: %s -> %s, want %s -> %s", m.Name(), m.Input().FullName(), m.Output().FullName(), w.in, w.out)
		}
		if m.IsStreamingClient() != w.cstream || m.IsStreamingServer() != w.sstrm {
			t.Errorf("%s: streaming client=%v server=%v, want %v/%v", m.Name(), m.IsStreamingClient(), m.IsStreamingServer(), w.cstream, w.sstrm)
		}
		rule, _ := proto.GetExtension(m.Options(), optionsv1.E_Authorization).(*optionsv1.AuthorizationRule)
		if rule.GetAuthMode() != w.mode || rule.GetScope() != w.scope {
			t.Errorf("%s: auth %q scope %q, want %q %q", m.Name(), rule.GetAuthMode(), rule.GetScope(), w.mode, w.scope)
		}
		if wantRole := map[bool]string{true: "user", false: ""}[w.scope != ""]; rule.GetWorkspaceRole() != wantRole {
			t.Errorf("%s: workspace_role %q, want %q", m.Name(), rule.GetWorkspaceRole(), wantRole)
		}
	}
	if n := service(t, "openshell.compute.v1.ComputeDriver").Methods().Len(); n != 12 {
		t.Errorf("ComputeDriver has %d RPCs, want 12", n)
	}
}

func TestFieldFacts(t *testing.T) {
	for _, tc := range []struct {
		msg      proto.Message
		field    protoreflect.Name
		number   protoreflect.FieldNumber
		kind     protoreflect.Kind
		presence bool // declared with proto3 `optional`
		secret   bool
	}{
		{&openshellv1.SandboxTemplate{}, "user_namespaces", 10, protoreflect.BoolKind, true, false},
		{&openshellv1.SandboxTemplate{}, "driver_config", 11, protoreflect.MessageKind, false, false},
		{&openshellv1.GpuResourceRequirements{}, "count", 1, protoreflect.Uint32Kind, true, false},
		{&computev1.GpuResourceRequirements{}, "count", 1, protoreflect.Uint32Kind, true, false},
		{&openshellv1.SandboxStatus{}, "exit_code", 9, protoreflect.Int32Kind, true, false},
		{&openshellv1.SandboxStatus{}, "phase", 6, protoreflect.EnumKind, false, false},
		{&openshellv1.SandboxSpec{}, "command", 12, protoreflect.StringKind, false, false},
		{&openshellv1.SandboxSpec{}, "policy", 7, protoreflect.MessageKind, false, false},
		{&openshellv1.CreateSshSessionResponse{}, "token", 2, protoreflect.StringKind, false, true},
		{&openshellv1.CreateSshSessionResponse{}, "host_key_fingerprint", 7, protoreflect.StringKind, false, false},
		{&openshellv1.TcpForwardInit{}, "authorization_token", 7, protoreflect.StringKind, false, true},
		{&openshellv1.RevokeSshSessionRequest{}, "token", 1, protoreflect.StringKind, false, true},
		{&openshellv1.RelayOpen{}, "service_id", 5, protoreflect.StringKind, false, false},
		{&computev1.DriverSandboxSpec{}, "sandbox_token", 11, protoreflect.StringKind, false, true},
		{&computev1.DriverSandboxTemplate{}, "resources", 10, protoreflect.MessageKind, false, false},
		{&computev1.GetCapabilitiesResponse{}, "gateway_manages_lifecycle", 6, protoreflect.BoolKind, false, false},
		{&sandboxv1.NetworkEndpoint{}, "provider_credentialed", 26, protoreflect.BoolKind, false, false},
		{&sandboxv1.McpOptions{}, "strict_tool_names", 1, protoreflect.BoolKind, true, false},
		{&sandboxv1.L7Allow{}, "params", 9, protoreflect.MessageKind, false, false},
		{&sandboxv1.GetSandboxConfigResponse{}, "extension_authentication_enabled", 12, protoreflect.BoolKind, false, false},
	} {
		md := tc.msg.ProtoReflect().Descriptor()
		fd := md.Fields().ByName(tc.field)
		if fd == nil {
			t.Errorf("%s.%s missing", md.FullName(), tc.field)
			continue
		}
		if fd.Number() != tc.number || fd.Kind() != tc.kind {
			t.Errorf("%s: #%d %v, want #%d %v", fd.FullName(), fd.Number(), fd.Kind(), tc.number, tc.kind)
		}
		if got := fd.HasOptionalKeyword(); got != tc.presence {
			t.Errorf("%s: optional keyword %v, want %v", fd.FullName(), got, tc.presence)
		}
		if got, _ := proto.GetExtension(fd.Options(), optionsv1.E_Secret).(bool); got != tc.secret {
			t.Errorf("%s: secret=%v, want %v", fd.FullName(), got, tc.secret)
		}
	}
}

func TestReservedAndOneofs(t *testing.T) {
	for _, tc := range []struct {
		msg     proto.Message
		numbers []protoreflect.FieldNumber
		names   []protoreflect.Name
	}{
		{&openshellv1.Sandbox{}, []protoreflect.FieldNumber{4, 5}, []protoreflect.Name{"phase", "current_policy_version"}},
		{&openshellv1.SandboxSpec{}, []protoreflect.FieldNumber{10, 11}, []protoreflect.Name{"gpu_device", "proposal_approval_mode"}},
		{&openshellv1.SandboxTemplate{}, []protoreflect.FieldNumber{9}, []protoreflect.Name{"volume_claim_templates"}},
		{&computev1.GetCapabilitiesResponse{}, []protoreflect.FieldNumber{4, 5}, []protoreflect.Name{"supports_gpu", "gpu_count"}},
		{&computev1.DriverSandboxSpec{}, []protoreflect.FieldNumber{10}, []protoreflect.Name{"gpu_device"}},
		{&sandboxv1.L7Allow{}, []protoreflect.FieldNumber{8}, nil},
		{&sandboxv1.L7DenyRule{}, []protoreflect.FieldNumber{8}, nil},
	} {
		md := tc.msg.ProtoReflect().Descriptor()
		for _, n := range tc.numbers {
			if !md.ReservedRanges().Has(n) {
				t.Errorf("%s: number %d not reserved", md.FullName(), n)
			}
		}
		for _, n := range tc.names {
			if !md.ReservedNames().Has(n) {
				t.Errorf("%s: name %q not reserved", md.FullName(), n)
			}
		}
	}
	for _, tc := range []struct {
		msg    proto.Message
		oneof  protoreflect.Name
		fields map[protoreflect.Name]protoreflect.FieldNumber
	}{
		{&openshellv1.SandboxStreamEvent{}, "payload", map[protoreflect.Name]protoreflect.FieldNumber{"sandbox": 1, "log": 2, "event": 3, "warning": 4, "draft_policy_update": 5}},
		{&openshellv1.TcpForwardInit{}, "target", map[protoreflect.Name]protoreflect.FieldNumber{"ssh": 5, "tcp": 6, "transfer": 1000}}, // transfer: project field
		{&openshellv1.GatewayMessage{}, "payload", map[protoreflect.Name]protoreflect.FieldNumber{"session_accepted": 1, "session_rejected": 2, "heartbeat": 3, "relay_open": 4, "relay_close": 5}},
		{&computev1.WatchSandboxesEvent{}, "payload", map[protoreflect.Name]protoreflect.FieldNumber{"sandbox": 1, "deleted": 2, "platform_event": 3}},
		{&computev1.GatewayListenerRequirement{}, "selector", map[protoreflect.Name]protoreflect.FieldNumber{"exact_bind_address": 2, "default_route_interface": 3, "loopback_interface": 4}},
		{&sandboxv1.SettingValue{}, "value", map[protoreflect.Name]protoreflect.FieldNumber{"string_value": 1, "bool_value": 2, "int_value": 3, "bytes_value": 4}},
	} {
		od := tc.msg.ProtoReflect().Descriptor().Oneofs().ByName(tc.oneof)
		if od == nil || od.IsSynthetic() {
			t.Errorf("%s: real oneof %q missing", tc.msg.ProtoReflect().Descriptor().FullName(), tc.oneof)
			continue
		}
		if od.Fields().Len() != len(tc.fields) {
			t.Errorf("%s: %d members, want %d", od.FullName(), od.Fields().Len(), len(tc.fields))
		}
		for name, num := range tc.fields {
			if fd := od.Fields().ByName(name); fd == nil || fd.Number() != num {
				t.Errorf("%s: member %s missing or not #%d", od.FullName(), name, num)
			}
		}
	}
}

func TestEnumNumbers(t *testing.T) {
	for _, tc := range []struct {
		got  protoreflect.EnumNumber
		want protoreflect.EnumNumber
	}{
		{openshellv1.SandboxPhase_SANDBOX_PHASE_READY.Number(), 2},
		{openshellv1.SandboxPhase_SANDBOX_PHASE_DELETING.Number(), 4},
		{openshellv1.SandboxPhase_SANDBOX_PHASE_STARTING.Number(), 8},
		{openshellv1.ServiceStatus_SERVICE_STATUS_HEALTHY.Number(), 1},
		{sandboxv1.PolicySource_POLICY_SOURCE_GLOBAL.Number(), 2},
	} {
		if tc.got != tc.want {
			t.Errorf("enum number %d, want %d", tc.got, tc.want)
		}
	}
}
