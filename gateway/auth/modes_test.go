package auth_test

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/api/optionsv1"
	"github.com/openshell/openshell/gateway/auth"
)

// TestModesMatchProto keeps the mode table in step with the auth_mode options of
// every OpenShell RPC.
func TestModesMatchProto(t *testing.T) {
	byOption := map[string]auth.Mode{"unauthenticated": auth.Unauthenticated, "bearer": auth.User, "sandbox": auth.Sandbox, "dual": auth.Dual}
	svc := openshellv1.File_openshell_proto.Services().ByName("OpenShell")
	if svc == nil || svc.Methods().Len() != 67 {
		t.Fatalf("OpenShell not in openshell.proto with its 67 RPCs")
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
