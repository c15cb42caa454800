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
