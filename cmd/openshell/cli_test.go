package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestHumanize(t *testing.T) {
	tests := []struct {
		err  error
		want []string
	}{
		{status.Error(codes.Unavailable, "connection error: desc = \"transport: Error while dialing: dial tcp 127.0.0.1:1: connect: connection refused\""),
			[]string{"cannot reach gateway \"default\"", "openshell gateway start"}},
		{status.Error(codes.Unauthenticated, "ListSandboxes needs credentials"), []string{"did not accept this client", "gateway start"}},
		{status.Error(codes.NotFound, "store: sandbox named \"x\" in workspace \"default\": not found"), []string{"not found", "openshell sandbox list"}},
		{fmt.Errorf("create sandbox: %w", status.Error(codes.InvalidArgument, "name \"A\" is not a DNS label")), []string{"create sandbox: invalid request: name \"A\" is not a DNS label"}},
		{status.Error(codes.Aborted, "resource version conflict"), []string{"run it again"}},
		{errors.New("plain error"), []string{"plain error"}},
	}
	for _, tc := range tests {
		got := humanize(tc.err, "default")
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("humanize(%v) = %q, want it to contain %q", tc.err, got, w)
			}
		}
		if strings.Contains(got, "rpc error:") {
			t.Errorf("humanize(%v) leaks the gRPC prefix: %q", tc.err, got)
		}
	}
	if exitCode(&exitError{code: 3, err: errors.New("x")}) != 3 || exitCode(errors.New("unknown flag: --x")) != 2 || exitCode(errors.New("boom")) != 1 {
		t.Error("exit codes")
	}
}

func TestBuildCreateRequest(t *testing.T) {
	policy := filepath.Join(t.TempDir(), "p.yaml")
	os.WriteFile(policy, []byte("version: 1\nfilesystem_policy:\n  read_only: [/usr]\nnetwork_policies:\n  web:\n    name: web\n    endpoints:\n      - host: example.com\n        port: 443\n"), 0o600)
	req, err := buildCreateRequest(createOptions{name: "dev", image: "img:1", cpu: "2", memory: "1Gi", env: []string{"A=1", "B=x=y"},
		labels: []string{"team=a"}, gpu: "1", policy: policy}, "ws", []string{"sleep", "1"})
	if err != nil {
		t.Fatal(err)
	}
	sp := req.GetSpec()
	if req.GetName() != "dev" || req.GetWorkspace() != "ws" || req.GetLabels()["team"] != "a" || sp.GetEnvironment()["B"] != "x=y" ||
		sp.GetTemplate().GetImage() != "img:1" || sp.GetResourceRequirements().GetGpu() == nil || strings.Join(sp.GetCommand(), " ") != "sleep 1" {
		t.Fatalf("request = %v", req)
	}
	if got := sp.GetTemplate().GetResources().GetFields()["limits"].GetStructValue().GetFields()["memory"].GetStringValue(); got != "1Gi" {
		t.Errorf("limits.memory = %q", got)
	}
	if ep := sp.GetPolicy().GetNetworkPolicies()["web"].GetEndpoints(); len(ep) != 1 || ep[0].GetPort() != 443 {
		t.Errorf("policy = %v", sp.GetPolicy())
	}
	bad := []struct {
		o    createOptions
		want string
	}{
		{createOptions{name: "Bad"}, "--name"},
		{createOptions{env: []string{"noequals"}}, "--env"},
		{createOptions{env: []string{"1X=y"}}, "--env"},
		{createOptions{labels: []string{"a b=c"}}, "--label"},
		{createOptions{policy: filepath.Join(t.TempDir(), "missing.yaml")}, "--policy"},
	}
	for _, b := range bad {
		if _, err := buildCreateRequest(b.o, "", nil); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("buildCreateRequest(%+v) = %v, want an error naming %s", b.o, err, b.want)
		}
	}
	os.WriteFile(policy, []byte("verzion: 1\n"), 0o600)
	if _, err := buildCreateRequest(createOptions{policy: policy}, "", nil); err == nil || !strings.Contains(err.Error(), "verzion") {
		t.Errorf("unknown policy field: %v", err)
	}
}

// FuzzBuildCreateRequest: arbitrary flag values never panic, and errors name a flag or field.
func FuzzBuildCreateRequest(f *testing.F) {
	f.Add("dev", "A=1", "team=a", "2", "1Gi")
	f.Add("", "=", "=", "", "")
	f.Add("-x", "1=2", "a/b=c", "x", "y")
	f.Fuzz(func(t *testing.T, name, env, label, cpu, mem string) {
		_, err := buildCreateRequest(createOptions{name: name, env: []string{env}, labels: []string{label}, cpu: cpu, memory: mem}, "", nil)
		if err == nil {
			return
		}
		msg := err.Error()
		for _, f := range []string{"--name", "--env", "--label", "--cpu", "--memory", "spec.", "name", "labels"} {
			if strings.Contains(msg, f) {
				return
			}
		}
		t.Fatalf("error names no flag or field: %v", err)
	})
}

// TestBuildCreateRequestDiskSize: --disk-size goes to the vm driver's driver_config
// (beside GPU ids there), is refused with --from-snapshot (the snapshot's disk stays)
// and when it is not a quantity, naming the flag.
func TestBuildCreateRequestDiskSize(t *testing.T) {
	req, err := buildCreateRequest(createOptions{diskSize: "20Gi", gpuDevices: []string{"0000:01:00.0"}}, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	vm := req.GetSpec().GetTemplate().GetDriverConfig().GetFields()[vmDriverName].GetStructValue().GetFields()
	if got := vm[diskSizeDriverConfigKey].GetStringValue(); got != "20Gi" {
		t.Errorf("driver_config.vm.disk_size = %q, want 20Gi", got)
	}
	if vm[gpuDriverConfigKey] == nil {
		t.Error("the GPU ids were dropped from the vm driver's driver_config")
	}
	if docker := req.GetSpec().GetTemplate().GetDriverConfig().GetFields()["docker"].GetStructValue().GetFields(); docker[diskSizeDriverConfigKey] != nil {
		t.Error("disk_size went to the docker driver's driver_config too")
	}
	if req, _ := buildCreateRequest(createOptions{}, "", nil); req.GetSpec().GetTemplate().GetDriverConfig() != nil {
		t.Errorf("a create without --disk-size has a driver_config: %v", req.GetSpec().GetTemplate().GetDriverConfig())
	}
	for _, o := range []createOptions{{diskSize: "20Gi", fromSnapshot: "snap"}, {diskSize: "20 Gi"}} {
		if _, err := buildCreateRequest(o, "", nil); err == nil || !strings.Contains(err.Error(), "--disk-size") {
			t.Errorf("%+v: %v, want an error naming --disk-size", o, err)
		}
	}
}
