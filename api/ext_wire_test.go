package api_test

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/api/optionsv1"
)

// TestOpenShellExtService pins the extension service other components code against
// (the supervisor calls ReportPolicyStatus and GetSandboxProviders by these names).
func TestOpenShellExtService(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{openshellv1.OpenShellExt_UpdateSandboxPolicy_FullMethodName, "/openshell.v1.OpenShellExt/UpdateSandboxPolicy"},
		{openshellv1.OpenShellExt_ReportPolicyStatus_FullMethodName, "/openshell.v1.OpenShellExt/ReportPolicyStatus"},
		{openshellv1.OpenShellExt_GetSandboxProviders_FullMethodName, "/openshell.v1.OpenShellExt/GetSandboxProviders"},
		{openshellv1.OpenShellExt_CreateProvider_FullMethodName, "/openshell.v1.OpenShellExt/CreateProvider"},
		{openshellv1.OpenShellExt_DeleteProvider_FullMethodName, "/openshell.v1.OpenShellExt/DeleteProvider"},
	} {
		if tc.got != tc.want {
			t.Errorf("method name %q, want %q", tc.got, tc.want)
		}
	}
	want := map[string]struct {
		in, out protoreflect.FullName
		mode    string
	}{
		"UpdateSandboxPolicy": {"openshell.v1.UpdateSandboxPolicyRequest", "openshell.v1.UpdateSandboxPolicyResponse", "bearer"},
		"ReportPolicyStatus":  {"openshell.v1.ReportPolicyStatusRequest", "openshell.v1.ReportPolicyStatusResponse", "sandbox"},
		"GetSandboxProviders": {"openshell.v1.GetSandboxProvidersRequest", "openshell.v1.GetSandboxProvidersResponse", "sandbox"},
		"CreateProvider":      {"openshell.v1.CreateProviderRequest", "openshell.v1.Provider", "bearer"},
		"GetProvider":         {"openshell.v1.GetProviderRequest", "openshell.v1.Provider", "bearer"},
		"ListProviders":       {"openshell.v1.ListProvidersRequest", "openshell.v1.ListProvidersResponse", "bearer"},
		"DeleteProvider":      {"openshell.v1.DeleteProviderRequest", "openshell.v1.DeleteProviderResponse", "bearer"},
	}
	svc := service(t, "openshell.v1.OpenShellExt")
	if got := svc.ParentFile().Path(); got != "openshell_ext.proto" {
		t.Errorf("OpenShellExt defined in %q, want openshell_ext.proto (openshell.proto is the upstream subset)", got)
	}
	if svc.Methods().Len() != len(want) {
		t.Errorf("OpenShellExt has %d RPCs, want %d", svc.Methods().Len(), len(want))
	}
	for i := 0; i < svc.Methods().Len(); i++ {
		m := svc.Methods().Get(i)
		w, ok := want[string(m.Name())]
		if !ok {
			t.Errorf("unexpected RPC %s", m.Name())
			continue
		}
		if m.Input().FullName() != w.in || m.Output().FullName() != w.out || m.IsStreamingClient() || m.IsStreamingServer() {
			t.Errorf("%s: %s -> %s, want unary %s -> %s", m.Name(), m.Input().FullName(), m.Output().FullName(), w.in, w.out)
		}
		rule, _ := proto.GetExtension(m.Options(), optionsv1.E_Authorization).(*optionsv1.AuthorizationRule)
		if rule.GetAuthMode() != w.mode {
			t.Errorf("%s: auth %q, want %q", m.Name(), rule.GetAuthMode(), w.mode)
		}
	}
	// Field numbers the supervisor relies on.
	rps := (&openshellv1.ReportPolicyStatusRequest{}).ProtoReflect().Descriptor().Fields()
	for name, num := range map[protoreflect.Name]protoreflect.FieldNumber{"sandbox_id": 1, "version": 2, "applied": 3, "error": 4} {
		if f := rps.ByName(name); f == nil || f.Number() != num {
			t.Errorf("ReportPolicyStatusRequest.%s: %v, want number %d", name, f, num)
		}
	}
	pc := (&openshellv1.ProviderCredentials{}).ProtoReflect().Descriptor().Fields()
	for name, num := range map[protoreflect.Name]protoreflect.FieldNumber{"name": 1, "type": 2, "credentials": 3, "hosts": 4} {
		if f := pc.ByName(name); f == nil || f.Number() != num {
			t.Errorf("ProviderCredentials.%s: %v, want number %d", name, f, num)
		}
	}
	if secret, _ := proto.GetExtension(pc.ByName("credentials").Options(), optionsv1.E_Secret).(bool); !secret {
		t.Error("ProviderCredentials.credentials is not marked secret")
	}
}
