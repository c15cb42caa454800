package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/gateway/clientconf"
	"github.com/openshell/openshell/internal/testenv"
)

// TestTypeScriptClient runs e2e/tsclient (a TypeScript client on @grpc/grpc-js that
// loads the project's .proto files, typed by code generated from them) against a real
// gateway over mTLS: create a
// sandbox with a provider, exec, set a policy and wait for the supervisor to load
// it, delete. A second protobuf implementation reading the same schema is where a
// wire mistake in the Go code shows up.
func TestTypeScriptClient(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: not in -short")
	}
	testenv.RequireCommand(t, "node", "run scripts/setup-node.sh")
	dir, err := filepath.Abs("tsclient")
	if err != nil {
		t.Fatal(err)
	}
	_, err = os.Stat(filepath.Join(dir, "node_modules", "@grpc", "grpc-js"))
	testenv.Require(t, err == nil, "e2e/tsclient has no node_modules: run scripts/setup-node.sh")
	// TypeScript types generated from the project's .proto files, then compiled: a
	// request field the client misnames fails here.
	protoDir, err := filepath.Abs(filepath.Join("..", "api", "proto"))
	if err != nil {
		t.Fatal(err)
	}
	gen := exec.CommandContext(t.Context(), "node", filepath.Join(dir, "node_modules", "@grpc", "proto-loader", "build", "bin", "proto-loader-gen-types.js"),
		"--keepCase", "--longs=String", "--enums=String", "--defaults", "--oneofs", "--grpcLib=@grpc/grpc-js",
		"--outDir="+filepath.Join(dir, "generated"), "--includeDirs", protoDir, "/usr/include", "--", "openshell.proto")
	if out, err := gen.CombinedOutput(); err != nil {
		t.Fatalf("proto-loader-gen-types: %v\n%s", err, out)
	}
	build := exec.CommandContext(t.Context(), "node", filepath.Join(dir, "node_modules", "typescript", "bin", "tsc"), "-p", dir)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("tsc: %v\n%s", err, out)
	}

	h := newHarness(t)
	h.dial(t) // points HOME/XDG at the harness, as the CLI sees them
	g, err := clientconf.Load(clientconf.DefaultName)
	if err != nil {
		t.Fatal(err)
	}
	target, useTLS, err := g.Target()
	if err != nil || !useTLS {
		t.Fatalf("gateway endpoint %q: TLS %v, %v; the test needs the mTLS endpoint", g.Endpoint, useTLS, err)
	}
	name, provider := uniqueName("ts"), uniqueName("tsprov")
	ctx, cancel := context.WithTimeout(t.Context(), 6*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", filepath.Join(dir, "dist", "client.js"))
	cmd.Env = append(os.Environ(),
		"OPENSHELL_ENDPOINT="+target,
		"OPENSHELL_CA="+filepath.Join(g.Dir, clientconf.CAFile),
		"OPENSHELL_CERT="+filepath.Join(g.Dir, clientconf.CertFile),
		"OPENSHELL_KEY="+filepath.Join(g.Dir, clientconf.KeyFile),
		"SANDBOX="+name, "PROVIDER="+provider, "IMAGE="+testImage())
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("TypeScript client: %v\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
	}
	t.Logf("TypeScript client run took %s: %s", time.Since(start).Round(time.Millisecond), stdout.String())
	var got struct {
		Health              string            `json:"health"`
		Drivers             []string          `json:"drivers"`
		ProviderCredentials map[string]string `json:"provider_credentials"`
		Phase               string            `json:"phase"`
		Exec                struct {
			Stdout   string `json:"stdout"`
			ExitCode int    `json:"exit_code"`
		} `json:"exec"`
		SandboxProviders []string `json:"sandbox_providers"`
		PolicyVersion    int      `json:"policy_version"`
		PolicyStatus     string   `json:"policy_status"`
		ActiveVersion    int      `json:"active_version"`
		Revisions        []string `json:"revisions"`
		Deleted          bool     `json:"deleted"`
		ProviderDeleted  bool     `json:"provider_deleted"`
		Unimplemented    string   `json:"unimplemented"`
		SandboxLogs      []string `json:"sandbox_logs"` // only when the placeholder is missing
	}
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("client output is not JSON: %v\n%s", err, stdout.String())
	}
	checks := []struct {
		ok   bool
		what string
	}{
		{got.Health == "SERVICE_STATUS_HEALTHY", "Health status"},
		{slices.Equal(got.Drivers, []string{driver()}), "GetGatewayInfo names the driver"},
		{len(got.ProviderCredentials) == 1 && got.ProviderCredentials["TS_TOKEN"] == "", "CreateProvider returns the key without its value"},
		{got.Phase == "SANDBOX_PHASE_READY", "sandbox READY"},
		{got.Exec.ExitCode == 0 && strings.HasPrefix(got.Exec.Stdout, "hello from typescript\n"), "exec output and exit code"},
		// The agent sees a placeholder for the provider's key, never the value.
		{strings.Contains(got.Exec.Stdout, "openshell-placeholder:"+provider+":TS_TOKEN") && !strings.Contains(stdout.String(), "ts-secret-value"), "provider placeholder in the sandbox environment"},
		{slices.Equal(got.SandboxProviders, []string{provider}), "ListSandboxProviders"},
		{got.PolicyVersion == 2 && got.PolicyStatus == "POLICY_STATUS_LOADED" && got.ActiveVersion == 2, "UpdateConfig version 2 loaded by the supervisor"},
		{slices.Equal(got.Revisions, []string{"2:POLICY_STATUS_LOADED", "1:POLICY_STATUS_SUPERSEDED"}), "ListSandboxPolicies history"},
		{got.Deleted && got.ProviderDeleted, "sandbox and provider deleted"},
		{strings.Contains(got.Unimplemented, "UNIMPLEMENTED") && strings.Contains(got.Unimplemented, "workspace management is not implemented"), "an unimplemented RPC says so"},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("%s: got %+v", c.what, got)
		}
	}
	if len(got.SandboxLogs) > 0 {
		t.Logf("the sandbox's log, read when the exec saw no placeholder:\n%s", strings.Join(got.SandboxLogs, "\n"))
	}
}
