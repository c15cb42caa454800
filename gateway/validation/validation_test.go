package validation

import (
	"errors"
	"strings"
	"testing"

	"github.com/openshell/openshell/api/openshellv1"
)

func TestName(t *testing.T) {
	good := []string{"a", "my-sandbox", "x1", strings.Repeat("a", 63)}
	bad := []string{"", "-a", "a-", "A", "a_b", "a.b", strings.Repeat("a", 64), "ä"}
	for _, n := range good {
		if err := Name("name", n); err != nil {
			t.Errorf("Name(%q) = %v", n, err)
		}
	}
	for _, n := range bad {
		err := Name("name", n)
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "name") {
			t.Errorf("Name(%q) = %v, want an invalid-argument error naming the field", n, err)
		}
	}
}

func TestLabelsAndEnv(t *testing.T) {
	if err := Labels("labels", map[string]string{"app": "web", "example.com/tier": "", "a.b_c-d": "X.y"}); err != nil {
		t.Error(err)
	}
	for _, m := range []map[string]string{{"": "x"}, {"-a": "x"}, {"a": "b c"}, {"Example.com/x": "1"}, {"/x": "1"}} {
		if err := Labels("labels", m); err == nil || !strings.Contains(err.Error(), "labels") {
			t.Errorf("Labels(%v) = %v", m, err)
		}
	}
	if err := Env("env", map[string]string{"PATH": "/bin", "_x1": ""}); err != nil {
		t.Error(err)
	}
	for _, k := range []string{"1A", "A-B", "", "A B"} {
		if err := Env("env", map[string]string{k: "v"}); err == nil || !strings.Contains(err.Error(), "env") {
			t.Errorf("Env(%q) = %v", k, err)
		}
	}
}

func TestCreateRequest(t *testing.T) {
	if err := CreateRequest(&openshellv1.CreateSandboxRequest{Name: "ok", Spec: &openshellv1.SandboxSpec{}}); err != nil {
		t.Fatal(err)
	}
	err := CreateRequest(&openshellv1.CreateSandboxRequest{Name: "ok"})
	if err == nil || !strings.Contains(err.Error(), "spec") {
		t.Fatalf("missing spec: %v", err)
	}
	err = CreateRequest(&openshellv1.CreateSandboxRequest{Name: "Bad_Name", Spec: &openshellv1.SandboxSpec{}})
	if err == nil || !strings.Contains(err.Error(), "name") || !strings.Contains(err.Error(), "DNS label") {
		t.Fatalf("bad name: %v", err)
	}
}

// FuzzValidateCreate feeds arbitrary names, label and env pairs (as the CLI parses them
// from K=V) through the request validator: it must never panic, and every error must
// name the field it is about.
func FuzzValidateCreate(f *testing.F) {
	f.Add("my-sb", "app=web", "FOO=bar", "ws", "img:1")
	f.Add("", "=", "=", "", "")
	f.Add("A", "a/b=c", "1=2", "Default", "a b")
	f.Add(strings.Repeat("x", 70), "k=v=w", "X=\x00", "-", "\n")
	f.Fuzz(func(t *testing.T, name, label, env, ws, image string) {
		req := &openshellv1.CreateSandboxRequest{Name: name, Workspace: ws, Spec: &openshellv1.SandboxSpec{
			Template: &openshellv1.SandboxTemplate{Image: image}}}
		if k, v, err := ParseKeyValue("--label", label); err == nil {
			req.Labels = map[string]string{k: v}
		} else if !strings.Contains(err.Error(), "--label") {
			t.Fatalf("ParseKeyValue error does not name the flag: %v", err)
		}
		if k, v, err := ParseKeyValue("--env", env); err == nil {
			req.Spec.Environment = map[string]string{k: v}
		} else if !strings.Contains(err.Error(), "--env") {
			t.Fatalf("ParseKeyValue error does not name the flag: %v", err)
		}
		err := CreateRequest(req)
		if err == nil {
			// Accepted input must satisfy the documented rules.
			if name != "" && (len(name) > MaxNameLen || !dnsLabel.MatchString(name)) {
				t.Fatalf("accepted bad name %q", name)
			}
			for k := range req.Spec.Environment {
				if !envKeyRule.MatchString(k) {
					t.Fatalf("accepted bad env key %q", k)
				}
			}
			return
		}
		if !errors.Is(err, ErrInvalid) {
			t.Fatalf("error does not wrap ErrInvalid: %v", err)
		}
		msg := err.Error()
		named := false
		for _, f := range []string{"name", "workspace", "labels", "spec.environment", "spec.template.image", "annotations"} {
			if strings.Contains(msg, f) {
				named = true
			}
		}
		if !named {
			t.Fatalf("error names no field: %v", err)
		}
	})
}
