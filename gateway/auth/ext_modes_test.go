package auth_test

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/api/optionsv1"
	"github.com/openshell/openshell/gateway/auth"
)

// TestExtModesMatchProto keeps the mode table in step with the auth_mode options of
// the OpenShellExt service.
func TestExtModesMatchProto(t *testing.T) {
	byOption := map[string]auth.Mode{"unauthenticated": auth.Unauthenticated, "bearer": auth.User, "sandbox": auth.Sandbox, "dual": auth.Dual}
	svc := openshellv1.File_openshell_ext_proto.Services().ByName("OpenShellExt")
	if svc == nil {
		t.Fatal("OpenShellExt not in openshell_ext.proto")
	}
	for i := 0; i < svc.Methods().Len(); i++ {
		m := svc.Methods().Get(i)
		rule, _ := proto.GetExtension(m.Options(), optionsv1.E_Authorization).(*optionsv1.AuthorizationRule)
		want, ok := byOption[rule.GetAuthMode()]
		if !ok {
			t.Errorf("%s: unknown auth_mode %q", m.Name(), rule.GetAuthMode())
			continue
		}
		full := "/" + string(svc.FullName()) + "/" + string(m.Name())
		if got := auth.ModeOf(full); got != want {
			t.Errorf("%s: mode %v, proto says %q", full, got, rule.GetAuthMode())
		}
	}
}
