package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/openshell/openshell/gateway/doctor"
)

func runRoot(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(t.Context())
	return out.String(), err
}

// TestDoctorLocal: the hidden `doctor --local -o json` that `openshell doctor` runs
// prints every host check this binary carries, in name order, as a findings list.
func TestDoctorLocal(t *testing.T) {
	out, err := runRoot(t, "doctor", "--local", "-o", "json")
	if err != nil && err != errChecksFailed {
		t.Fatalf("doctor --local: %v\n%s", err, out)
	}
	var fs []doctor.Finding
	if err := json.Unmarshal([]byte(out), &fs); err != nil {
		t.Fatalf("not a findings list: %v\n%s", err, out)
	}
	var checks []string
	for _, f := range fs {
		checks = append(checks, f.Check)
		if f.Status == "" {
			t.Errorf("finding without a status: %+v", f)
		}
	}
	joined := strings.Join(checks, ",")
	for _, want := range []string{"driver.autodetect", "gpu", "kubernetes", "vm.driver"} {
		if !strings.Contains(joined, want) {
			t.Errorf("no %s finding: %s", want, joined)
		}
	}
	if (err == errChecksFailed) != doctor.Failed(fs) {
		t.Errorf("exit status %v does not match the findings %+v", err, fs)
	}
	if _, err := runRoot(t, "doctor"); err == nil || !strings.Contains(err.Error(), "--local") {
		t.Errorf("doctor without --local: %v", err)
	}
	if _, err := runRoot(t, "doctor", "--local", "-o", "yaml"); err == nil || !strings.Contains(err.Error(), "--output") {
		t.Errorf("doctor -o yaml: %v", err)
	}
}

func TestBuildImageFlags(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"build-image", "--engine", "buildah", "--tag", "x:1", dir}, `--engine "buildah"`},
		{[]string{"build-image", "--engine", "docker", dir}, "--tag is required"},
		{[]string{"build-image", "--tag", "x:1"}, "accepts 1 arg"},
	} {
		if _, err := runRoot(t, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error mentioning %q", tc.args, err, tc.want)
		}
	}
}

// TestCLIDelegation: `cli vm images ...` is the openshell command tree (help names
// `openshell`, completion answers in cobra's protocol).
func TestCLIDelegation(t *testing.T) {
	out, err := runRoot(t, "cli", "vm", "images", "--help")
	if err != nil || !strings.Contains(out, "openshell vm images [command]") {
		t.Errorf("help: %v\n%s", err, out)
	}
	out, err = runRoot(t, "cli", "vm", "images", "list", "-o", "json", "--cache-dir", t.TempDir())
	if err != nil || strings.TrimSpace(out) != "[]" {
		t.Errorf("list: %v\n%s", err, out)
	}
	out, err = runRoot(t, "cli", "__complete", "vm", "images", "")
	if err != nil || !strings.Contains(out, "list\t") || !strings.Contains(out, ":4") {
		t.Errorf("completion: %v\n%s", err, out)
	}
	if _, err := runRoot(t, "cli", "sandbox", "list"); err == nil {
		t.Errorf("cli runs only the delegated commands, yet `sandbox list` did not fail")
	}
}
