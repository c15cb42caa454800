package drivers_test

import (
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
)

var (
	idRE   = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)
	nameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
)

func TestValidateSandbox(t *testing.T) {
	spec := &computev1.DriverSandboxSpec{}
	for _, tc := range []struct {
		name string
		sb   *computev1.DriverSandbox
		ok   bool
	}{
		{"nil", nil, false},
		{"good", &computev1.DriverSandbox{Id: "0b6c2a9e-8f1d-4c1e-9a51-3f0e2d7c1b11", Name: "my-sandbox-1", Spec: spec}, true},
		{"single char name", &computev1.DriverSandbox{Id: "a", Name: "x", Spec: spec}, true},
		{"no id", &computev1.DriverSandbox{Name: "x", Spec: spec}, false},
		{"id with slash", &computev1.DriverSandbox{Id: "a/b", Name: "x", Spec: spec}, false},
		{"id too long", &computev1.DriverSandbox{Id: strings.Repeat("a", 129), Name: "x", Spec: spec}, false},
		{"no name", &computev1.DriverSandbox{Id: "a", Spec: spec}, false},
		{"upper-case name", &computev1.DriverSandbox{Id: "a", Name: "Sandbox", Spec: spec}, false},
		{"name with space", &computev1.DriverSandbox{Id: "a", Name: "my sandbox", Spec: spec}, false},
		{"name leading dash", &computev1.DriverSandbox{Id: "a", Name: "-x", Spec: spec}, false},
		{"name trailing dash", &computev1.DriverSandbox{Id: "a", Name: "x-", Spec: spec}, false},
		{"name too long", &computev1.DriverSandbox{Id: "a", Name: strings.Repeat("a", 64), Spec: spec}, false},
		{"name max length", &computev1.DriverSandbox{Id: "a", Name: strings.Repeat("a", 63), Spec: spec}, true},
		{"no spec", &computev1.DriverSandbox{Id: "a", Name: "x"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := drivers.ValidateSandbox(tc.sb)
			if tc.ok && err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if !tc.ok && !errors.Is(err, drivers.ErrInvalidArgument) {
				t.Fatalf("error %v, want ErrInvalidArgument", err)
			}
		})
	}
}

// The validators must agree with the documented regular expressions.
func FuzzValidateID(f *testing.F) {
	for _, s := range []string{"", "a", "0b6c2a9e-8f1d", "a/b", "a b", "ä", strings.Repeat("x", 129)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		err := drivers.ValidateID(id)
		if want := idRE.MatchString(id); (err == nil) != want {
			t.Fatalf("ValidateID(%q) = %v, regexp says valid=%v", id, err, want)
		}
		if err != nil && !errors.Is(err, drivers.ErrInvalidArgument) {
			t.Fatalf("error %v does not wrap ErrInvalidArgument", err)
		}
	})
}

func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"", "a", "a-b", "-a", "a-", "A", "a_b", "a.b", strings.Repeat("x", 63), strings.Repeat("x", 64)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := drivers.ValidateName(name)
		if want := nameRE.MatchString(name); (err == nil) != want {
			t.Fatalf("ValidateName(%q) = %v, regexp says valid=%v", name, err, want)
		}
	})
}
