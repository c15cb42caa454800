package main

import (
	"context"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/drivers/grpcdriver"
	"github.com/openshell/openshell/gateway/clientconf"
)

// TestExtensionCompletions completes the sandbox provider, policy and provider
// commands' arguments from a running gateway.
func TestExtensionCompletions(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the gateway binary")
	}
	tmp := cliEnv(t, "openshell-gateway")
	drv := drivertest.NewMemDriver()
	sock := filepath.Join(tmp, "drv.sock")
	lis, err := grpcdriver.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { grpcdriver.Serve(sctx, lis, drv); close(served) }()
	t.Cleanup(func() { scancel(); <-served })
	if out, err := runCLI(t, "gateway", "start", "--compute-driver-socket", sock, "--port", strconv.Itoa(freePort(t))); err != nil {
		t.Fatalf("gateway start: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := runCLI(t, "gateway", "stop"); err != nil {
			t.Errorf("gateway stop: %v %s", err, out)
		}
	})
	if out, err := runCLI(t, "provider", "create", "--name", "ghprov", "--type", "github", "--credential", "T=v", "--host", "api.github.com"); err != nil {
		t.Fatalf("provider create: %v\n%s", err, out)
	}
	cc, err := clientconf.Dialer(func() string { return clientconf.DefaultName })(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, err := openshellv1.NewOpenShellClient(cc).CreateSandbox(t.Context(), &openshellv1.CreateSandboxRequest{Name: "boxy",
		Spec: &openshellv1.SandboxSpec{Template: &openshellv1.SandboxTemplate{Image: "test:1"}}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args      []string
		want, not string
	}{
		{[]string{"sandbox", "provider", "attach", ""}, "boxy", "ghprov"},
		{[]string{"sandbox", "provider", "attach", "boxy", ""}, "ghprov", "boxy"},
		{[]string{"sandbox", "provider", "detach", "boxy", "g"}, "ghprov", "boxy"},
		{[]string{"sandbox", "provider", "list", "b"}, "boxy", "ghprov"},
		{[]string{"sandbox", "provider", "list", "boxy", ""}, "", "ghprov"},
		{[]string{"policy", "get", ""}, "boxy", "ghprov"},
		{[]string{"policy", "list", "bo"}, "boxy", "ghprov"},
		{[]string{"provider", "delete", ""}, "ghprov", "boxy"},
		{[]string{"provider", "update", "gh"}, "ghprov", "boxy"},
	} {
		out, err := runCLI(t, append([]string{"__complete"}, tc.args...)...)
		if err != nil {
			t.Fatalf("__complete %v: %v", tc.args, err)
		}
		names := strings.Split(out, "\n")
		if tc.want != "" && !slices.Contains(names, tc.want) || tc.not != "" && slices.Contains(names, tc.not) {
			t.Errorf("__complete %q = %q, want %q and not %q", strings.Join(tc.args, " "), out, tc.want, tc.not)
		}
	}
}
