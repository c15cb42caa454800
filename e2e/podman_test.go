package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// With the podman driver, `sandbox create --from DIR` builds DIR with the Podman
// service (progress shown) and runs the result; afterwards no container, pod, network
// or volume labelled openshell.ai/managed-by is left in that service.
func TestPodmanFromDirAndNoLeaks(t *testing.T) {
	if driver() != "podman" {
		t.Skip("podman driver only (E2E_DRIVER=podman)")
	}
	// Registered first, so it runs after the harness deleted its sandboxes and
	// stopped its gateway.
	t.Cleanup(func() {
		for _, what := range [][]string{
			{"ps", "-a", "-q", "--filter", "label=openshell.ai/managed-by"},
			{"pod", "ps", "-q", "--filter", "label=openshell.ai/managed-by"},
			{"network", "ls", "-q", "--filter", "label=openshell.ai/managed-by"},
			{"volume", "ls", "-q", "--filter", "label=openshell.ai/managed-by"},
		} {
			out, err := engineCmd(what...).CombinedOutput()
			if err != nil {
				t.Errorf("podman %s: %v %s", strings.Join(what, " "), err, out)
			} else if s := strings.TrimSpace(string(out)); s != "" {
				t.Errorf("leak: podman %s lists %q", what[0], s)
			}
		}
	})
	h := newHarness(t)
	dir := t.TempDir()
	df := "FROM " + dockerTestImage + "\nUSER root\nRUN echo built-by-podman > /sandbox/built\nUSER sandbox\n"
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(df), 0o644); err != nil {
		t.Fatal(err)
	}
	box := uniqueName("from")
	t.Cleanup(func() { _ = engineCmd("rmi", "-f", "openshell-build/"+box+":latest").Run() })
	r := h.mustRun(t, "sandbox", "create", "--name", box, "--from", dir, "--timeout", "120s", "--", "sleep", "100000")
	if out := r.stdout + r.stderr; !strings.Contains(out, "with the local Podman service") || !strings.Contains(out, "echo built-by-podman") {
		t.Fatalf("create --from DIR shows no Podman build progress:\n%s", out)
	}
	r = h.mustRun(t, "sandbox", "exec", "-n", box, "--", "cat", "/sandbox/built")
	if strings.TrimSpace(r.stdout) != "built-by-podman" {
		t.Fatalf("the sandbox does not run the built image: %q", r.stdout)
	}
}

// Bad input through the CLI on the podman driver: an image Podman does not have is
// refused before the gateway records anything; a name a foreign container holds
// fails the create, which the gateway keeps as an ERROR sandbox carrying the driver's
// message until it is deleted, and neither step touches the foreign container.
func TestPodmanBadInput(t *testing.T) {
	if driver() != "podman" {
		t.Skip("podman driver only (E2E_DRIVER=podman)")
	}
	h := newHarness(t)
	ctx := t.Context()
	gone := func(box string) {
		t.Helper()
		r := h.run(ctx, "sandbox", "get", box)
		if r.err == nil {
			t.Errorf("the gateway kept sandbox %s after its create failed:\n%s", box, r.stdout)
		}
		if r := h.mustRun(t, "sandbox", "list"); strings.Contains(r.stdout, box) {
			t.Errorf("sandbox list shows %s after its create failed:\n%s", box, r.stdout)
		}
	}

	box := uniqueName("noimg")
	r := h.run(ctx, "sandbox", "create", "--name", box, "--from", "openshell-test/no-such-image:latest", "--timeout", "60s", "--", "true")
	if r.err == nil || !strings.Contains(r.stderr, "not in Podman's local store") || !strings.Contains(r.stderr, "podman pull") {
		t.Fatalf("create with an unknown image: %v\nstdout: %s\nstderr: %s", r.err, r.stdout, r.stderr)
	}
	gone(box)

	box = uniqueName("taken")
	if out, err := engineCmd("create", "--name", "openshell-"+box, dockerTestImage, "true").CombinedOutput(); err != nil {
		t.Fatalf("podman create: %v %s", err, out)
	}
	t.Cleanup(func() { _ = engineCmd("rm", "-f", "openshell-"+box).Run() })
	r = h.run(ctx, "sandbox", "create", "--name", box, "--from", dockerTestImage, "--timeout", "60s", "--", "true")
	if r.err == nil || !strings.Contains(r.stderr, "already in use") {
		t.Fatalf("create with a taken name: %v\nstdout: %s\nstderr: %s", r.err, r.stdout, r.stderr)
	}
	got := h.mustRun(t, "sandbox", "get", box).stdout
	if !strings.Contains(got, "ERROR") || !strings.Contains(got, "CreateFailed") || !strings.Contains(got, "podman rm openshell-"+box) {
		t.Fatalf("the failed create is not an ERROR sandbox naming the cause and the fix:\n%s", got)
	}
	h.mustRun(t, "sandbox", "delete", box)
	gone(box)
	if out, err := engineCmd("inspect", "-f", "{{.State.Status}}", "openshell-"+box).Output(); err != nil || strings.TrimSpace(string(out)) != "created" {
		t.Errorf("the foreign container was touched: %q %v", out, err)
	}
}
