package podman

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A directory with a Dockerfile and a .dockerignore, built by each service: progress
// streams, the ignored file stays out of the context, the image runs as a sandbox.
func TestBuildImage(t *testing.T) {
	for _, md := range modes() {
		t.Run(md.name, func(t *testing.T) {
			requirePodman(t, md)
			dir := t.TempDir()
			files := map[string]string{
				"Dockerfile":    "FROM " + testImage + "\nUSER root\nCOPY . /ctx/\nRUN ls /ctx > /ctx-listing\nUSER sandbox\n",
				".dockerignore": "*.key\n",
				"keep.txt":      "kept",
				"secret.key":    "must not be sent",
			}
			for name, body := range files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			tag := "openshell-test/build-" + randHex(4) + ":latest"
			var progress bytes.Buffer
			id, err := BuildImage(t.Context(), md.socket, dir, tag, &progress)
			t.Cleanup(func() { _, _ = execCommand(podmanBin(), "--remote", "--url", "unix://"+md.socket, "rmi", "-f", tag) })
			if err != nil {
				t.Fatalf("BuildImage: %v\n%s", err, progress.String())
			}
			if id == "" || !strings.Contains(progress.String(), "COPY . /ctx/") {
				t.Errorf("id %q, progress lacks the steps:\n%s", id, progress.String())
			}
			listing := podmanCLI(t, md, "run", "--rm", tag, "cat", "/ctx-listing")
			if !strings.Contains(listing, "keep.txt") || strings.Contains(listing, "secret.key") {
				t.Errorf("context listing %q: want keep.txt and no secret.key", listing)
			}

			// A failing step is an error carrying the build's message.
			if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM "+testImage+"\nRUN exit 3\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err = BuildImage(t.Context(), md.socket, dir, tag, nil)
			if err == nil || !strings.Contains(err.Error(), "exit") {
				t.Errorf("failing build = %v; want the step's error", err)
			}
			if _, err := BuildImage(t.Context(), md.socket, filepath.Join(dir, "nope"), tag, nil); err == nil || !strings.Contains(err.Error(), "Dockerfile") {
				t.Errorf("missing path = %v", err)
			}
		})
	}
}
