package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDisableTLSRefusedOffLoopback runs the real binary: a plaintext gateway on a
// non-loopback address would make every caller an administrator, so it must exit
// non-zero before listening, with an error that names the fix.
func TestDisableTLSRefusedOffLoopback(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "openshell-gateway")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	for _, bind := range []string{"0.0.0.0", "::"} {
		t.Run(bind, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			// Exactly the command a user would type; HOME points the default state
			// directory into the test's temp dir should the gateway get that far.
			cmd := exec.CommandContext(ctx, bin, "--disable-tls", "--bind-address", bind)
			cmd.Env = []string{"HOME=" + dir, "PATH=/usr/bin:/bin"}
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() == 0 {
				t.Fatalf("openshell-gateway --disable-tls --bind-address %s: err %v (want a non-zero exit)\n%s", bind, err, out)
			}
			if ctx.Err() != nil {
				t.Fatalf("the gateway kept running instead of refusing:\n%s", out)
			}
			for _, want := range []string{"disable_tls", "not a loopback address", "--bind-address 127.0.0.1", "drop --disable-tls"} {
				if !strings.Contains(string(out), want) {
					t.Errorf("output does not mention %q:\n%s", want, out)
				}
			}
			if strings.Contains(string(out), "gateway listening") {
				t.Errorf("the gateway started listening:\n%s", out)
			}
			if _, err := os.Stat(filepath.Join(dir, ".local")); err == nil {
				t.Errorf("the refused gateway created state under HOME")
			}
		})
	}
}

// TestDynamicSupervisorRefused runs the real gateway with a dynamically linked
// openshell-sandbox next to it (what a plain `go build ./cmd/...` can make):
// it must exit before listening and say how to build the supervisor static.
func TestDynamicSupervisorRefused(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "openshell-gateway")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	// Any glibc-linked executable stands for the supervisor: the check reads only its
	// ELF headers. Debian's /bin/true is one (staticbin's test asserts it).
	dyn, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "openshell-sandbox"), dyn, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, drv := range []string{"docker", "vm"} {
		t.Run(drv, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, "--drivers", drv, "--port", "0")
			cmd.Env = []string{"HOME=" + dir, "PATH=/usr/bin:/bin"}
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() == 0 || ctx.Err() != nil {
				t.Fatalf("gateway with a dynamic supervisor: err %v (want a non-zero exit)\n%s", err, out)
			}
			for _, want := range []string{"openshell-sandbox is dynamically linked", "CGO_ENABLED=0 go build -o " + dir + "/openshell-sandbox ./cmd/openshell-sandbox"} {
				if !strings.Contains(string(out), want) {
					t.Errorf("output does not mention %q:\n%s", want, out)
				}
			}
			if strings.Contains(string(out), "gateway listening") {
				t.Errorf("the gateway started listening:\n%s", out)
			}
		})
	}
}
