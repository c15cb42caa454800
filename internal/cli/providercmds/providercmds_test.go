package providercmds_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/gateway"
	"github.com/openshell/openshell/gateway/auth"
	"github.com/openshell/openshell/gateway/pki"
	"github.com/openshell/openshell/gateway/secrets"
	"github.com/openshell/openshell/gateway/store/sqlite"
	"github.com/openshell/openshell/gateway/token"
	"github.com/openshell/openshell/internal/cli/policycmds"
	"github.com/openshell/openshell/internal/cli/providercmds"
)

func env(m map[string]string) providercmds.LookupEnv {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestParseCredentialFlag(t *testing.T) {
	look := env(map[string]string{"GITHUB_TOKEN": "from-env", "EMPTY": ""})
	for _, tc := range []struct {
		in, key, value, err string
	}{
		{in: "GITHUB_TOKEN", key: "GITHUB_TOKEN", value: "from-env"},
		{in: "EMPTY", key: "EMPTY", value: ""},
		{in: "A=b=c", key: "A", value: "b=c"},
		{in: "A=", key: "A", value: ""},
		{in: "MISSING", err: "environment variable MISSING is not set"},
		{in: "=x", err: "key is empty"},
		{in: "1A=x", err: "environment variable name"},
		{in: "A-B=x", err: "environment variable name"},
	} {
		k, v, err := providercmds.ParseCredentialFlag(tc.in, look)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: err %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || k != tc.key || v != tc.value {
			t.Errorf("%q = %q, %q, %v; want %q, %q", tc.in, k, v, err, tc.key, tc.value)
		}
	}
}

func FuzzParseCredentialFlag(f *testing.F) {
	for _, s := range []string{"A", "A=b", "GITHUB_TOKEN", "=", "", "_x=y=z", "é=1", "A\x00=b"} {
		f.Add(s)
	}
	look := env(map[string]string{"A": "env-a", "GITHUB_TOKEN": "tok"})
	f.Fuzz(func(t *testing.T, s string) {
		k, v, err := providercmds.ParseCredentialFlag(s, look)
		if err != nil {
			return
		}
		if k == "" || strings.ContainsAny(k, "=- \x00") || (k[0] >= '0' && k[0] <= '9') {
			t.Fatalf("%q: accepted key %q", s, k)
		}
		if strings.Contains(s, "=") {
			if k+"="+v != s {
				t.Fatalf("%q: split into %q and %q", s, k, v)
			}
		} else if want, _ := look(k); v != want || s != k {
			t.Fatalf("%q: value %q, want the environment's %q", s, v, want)
		}
	})
}

// startGateway runs a real gateway (TLS, SQLite, secrets key, MemDriver) on loopback
// and returns a dialer with a user certificate.
func startGateway(t *testing.T) providercmds.DialFunc {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	bundle, err := pki.Ensure(filepath.Join(dir, "pki"), nil)
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := token.NewIssuer(filepath.Join(dir, "token.key"), "test")
	if err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(ctx, filepath.Join(dir, "openshell.db"))
	if err != nil {
		t.Fatal(err)
	}
	box, err := secrets.LoadOrCreate(filepath.Join(dir, secrets.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := gateway.New(ctx, gateway.Options{Store: st, Driver: drivertest.NewMemDriver(), DriverName: "mem", Tokens: issuer, Log: log,
		ReconcileInterval: time.Second, Secrets: box})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	gs := gateway.NewGRPCServer(&auth.Authenticator{Tokens: issuer, Log: log}, grpc.Creds(credentials.NewTLS(bundle.ServerTLSConfig())))
	srv.Register(gs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	t.Cleanup(func() {
		gs.Stop()
		srv.Close()
		st.Close()
	})
	return func(ctx context.Context) (*grpc.ClientConn, error) {
		cc, err := grpc.NewClient("passthrough:///"+lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(bundle.ClientTLSConfig())))
		if err == nil {
			t.Cleanup(func() { cc.Close() })
		}
		return cc, err
	}
}

func run(t *testing.T, dial providercmds.DialFunc, environ map[string]string, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "openshell", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(providercmds.CommandWithEnv(dial, env(environ)))
	sandbox := &cobra.Command{Use: "sandbox"}
	sandbox.AddCommand(providercmds.SandboxCommand(dial))
	root.AddCommand(sandbox, policycmds.Command(policycmds.GRPCFrom(policycmds.DialFunc(dial))))
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

func TestProviderCommands(t *testing.T) {
	dial := startGateway(t)
	environ := map[string]string{"GITHUB_TOKEN": "ghp_cli_secret"}

	_, err := run(t, dial, environ, "provider", "create", "--name", "gh", "--type", "github", "--credential", "NOT_SET")
	if err == nil || !strings.Contains(err.Error(), "environment variable NOT_SET is not set") {
		t.Fatalf("unset variable: %v", err)
	}
	out, err := run(t, dial, environ, "provider", "create", "--name", "gh", "--type", "github",
		"--credential", "GITHUB_TOKEN", "--credential", "GH_USER=bot", "--host", "api.github.com")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "GH_USER,GITHUB_TOKEN") || strings.Contains(out, "ghp_cli_secret") {
		t.Fatalf("create output: %s", out)
	}
	if _, err := run(t, dial, environ, "provider", "create", "--name", "gh", "--type", "github", "--credential", "A=b"); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("duplicate create: %v", err)
	}

	out, err = run(t, dial, environ, "provider", "list", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var list []map[string]any
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("list -o json is not a JSON array: %v\n%s", err, out)
	}
	name := func(m map[string]any) any { md, _ := m["metadata"].(map[string]any); return md["name"] }
	if len(list) != 1 || name(list[0]) != "gh" || list[0]["type"] != "github" || strings.Contains(out, "ghp_cli_secret") {
		t.Fatalf("list: %s", out)
	}
	out, err = run(t, dial, environ, "provider", "list")
	if err != nil || !strings.Contains(out, "NAME") || !strings.Contains(out, "api.github.com") {
		t.Fatalf("list table: %v\n%s", err, out)
	}
	out, err = run(t, dial, environ, "provider", "get", "gh", "-o", "json")
	var one map[string]any
	if err != nil || json.Unmarshal([]byte(out), &one) != nil || name(one) != "gh" {
		t.Fatalf("get json: %v\n%s", err, out)
	}
	if _, err := run(t, dial, environ, "provider", "get", "gh", "-o", "yaml"); err == nil {
		t.Fatal("-o yaml accepted")
	}
	// A wildcard host needs the explicit opt-in; the error names the flag.
	_, err = run(t, dial, environ, "provider", "create", "--name", "wild", "--type", "generic", "--credential", "A=b", "--host", "*.example.com")
	if err == nil || !strings.Contains(err.Error(), "hosts[0] \"*.example.com\" is a wildcard") || !strings.Contains(err.Error(), "--allow-wildcard-hosts") {
		t.Fatalf("wildcard without opt-in: %v", err)
	}
	_, err = run(t, dial, environ, "provider", "create", "--name", "hdr", "--type", "generic", "--credential", "A=b", "--host", "a.example.com", "--header", "Host")
	if err == nil || !strings.Contains(err.Error(), "headers[0] \"Host\"") {
		t.Fatalf("Host as a credential header: %v", err)
	}
	out, err = run(t, dial, environ, "provider", "create", "--name", "wild", "--type", "generic", "--credential", "A=b",
		"--host", "*.example.com", "--allow-wildcard-hosts", "--header", "X-Api-Key", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	cfg := func(m map[string]any) map[string]any { c, _ := m["config"].(map[string]any); return c }
	if err := json.Unmarshal([]byte(out), &one); err != nil || cfg(one)["allow_wildcard_hosts"] != "true" || fmt.Sprint(cfg(one)["headers"]) != "X-Api-Key" {
		t.Fatalf("wildcard provider: %v\n%s", err, out)
	}
	// update keeps unnamed credentials and replaces the hosts; the value never comes back.
	out, err = run(t, dial, environ, "provider", "update", "gh", "--credential", "GH_USER=robot", "--host", "uploads.github.com", "-o", "json")
	if err != nil || json.Unmarshal([]byte(out), &one) != nil || cfg(one)["hosts"] != "uploads.github.com" || strings.Contains(out, "robot") ||
		fmt.Sprint(one["credentials"]) != "map[GH_USER: GITHUB_TOKEN:]" {
		t.Fatalf("update: %v\n%s", err, out)
	}
	if _, err := run(t, dial, environ, "provider", "update", "gh"); err == nil || !strings.Contains(err.Error(), "nothing to update") {
		t.Fatalf("empty update: %v", err)
	}
	if _, err := run(t, dial, environ, "provider", "delete", "wild"); err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, dial, environ, "provider", "delete", "gh"); err != nil || !strings.Contains(out, "deleted") {
		t.Fatalf("delete: %v %s", err, out)
	}
	if _, err := run(t, dial, environ, "provider", "get", "gh"); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("get after delete: %v", err)
	}
}

// TestSandboxProviderAndPolicyHistoryCommands drives `sandbox provider
// attach|detach|list` and `policy set|list|get --rev|--full` against a real gateway.
func TestSandboxProviderAndPolicyHistoryCommands(t *testing.T) {
	dial := startGateway(t)
	environ := map[string]string{}
	mustRun := func(args ...string) string {
		t.Helper()
		out, err := run(t, dial, environ, args...)
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		return out
	}
	mustRun("provider", "create", "--name", "gh", "--type", "github", "--credential", "GITHUB_TOKEN=ghp_x", "--host", "api.github.com")
	cc, err := dial(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pb.NewOpenShellClient(cc).CreateSandbox(t.Context(), &pb.CreateSandboxRequest{Name: "box",
		Spec: &pb.SandboxSpec{Template: &pb.SandboxTemplate{Image: "test:1"}}}); err != nil {
		t.Fatal(err)
	}

	if out := mustRun("sandbox", "provider", "attach", "box", "gh"); !strings.Contains(out, "provider gh attached") {
		t.Fatalf("attach: %s", out)
	}
	if out := mustRun("sandbox", "provider", "attach", "box", "gh"); !strings.Contains(out, "already attached") {
		t.Fatalf("second attach: %s", out)
	}
	var list []map[string]any
	out := mustRun("sandbox", "provider", "list", "box", "-o", "json")
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 1 || strings.Contains(out, "ghp_x") {
		t.Fatalf("list: %v\n%s", err, out)
	}
	if _, err := run(t, dial, environ, "sandbox", "provider", "attach", "box", "nope"); err == nil || !strings.Contains(err.Error(), `provider "nope" does not exist`) {
		t.Fatalf("attach of a missing provider: %v", err)
	}
	if _, err := run(t, dial, environ, "provider", "delete", "gh"); err == nil || !strings.Contains(err.Error(), "sandbox provider detach") {
		t.Fatalf("delete in use: %v", err)
	}
	if out := mustRun("sandbox", "provider", "detach", "box", "gh"); !strings.Contains(out, "provider gh detached") {
		t.Fatalf("detach: %s", out)
	}
	if out := mustRun("sandbox", "provider", "list", "box"); strings.Contains(out, "gh") {
		t.Fatalf("list after detach: %s", out)
	}

	file := filepath.Join(t.TempDir(), "p.yaml")
	if err := os.WriteFile(file, []byte("version: 1\nnetwork_policies:\n  pypi:\n    endpoints:\n      - {host: pypi.org, port: 443}\n    binaries: [{path: /usr/bin/pip}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := mustRun("policy", "set", "box", "--policy", file); !strings.Contains(out, "policy version 2 stored") {
		t.Fatalf("set: %s", out)
	}
	out = mustRun("policy", "list", "box")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "VERSION") || !strings.HasPrefix(lines[1], "2 ") || !strings.Contains(lines[1], "pending") || !strings.HasPrefix(lines[2], "1 ") {
		t.Fatalf("policy list:\n%s", out)
	}
	if out := mustRun("policy", "get", "box", "--rev", "1"); strings.Contains(out, "pypi") || !strings.Contains(out, "policy version 1") {
		t.Fatalf("get --rev 1 (before the update):\n%s", out)
	}
	if out := mustRun("policy", "get", "box", "--full"); !strings.Contains(out, "# version: 2") || !strings.Contains(out, "# status: pending") || !strings.Contains(out, "pypi") {
		t.Fatalf("get --full:\n%s", out)
	}
	var rev map[string]any
	out = mustRun("policy", "get", "box", "--rev", "2", "--full", "-o", "json")
	if err := json.Unmarshal([]byte(out), &rev); err != nil || rev["version"] != float64(2) || rev["policy_hash"] == "" || rev["status"] != "POLICY_STATUS_PENDING" {
		t.Fatalf("get --rev 2 --full -o json: %v\n%s", err, out)
	}
	if _, err := run(t, dial, environ, "policy", "get", "box", "--rev", "9"); err == nil || !strings.Contains(err.Error(), "no policy version 9") {
		t.Fatalf("get --rev 9: %v", err)
	}
}
