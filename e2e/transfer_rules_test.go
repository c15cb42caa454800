package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestTransferRules: on every driver (on the VM and on containers the bytes take a
// bulk stream and the tar server serves its socket itself), an upload lands as the sandbox user and
// one into a path the policy leaves read-only for the agent is refused naming
// filesystem.read_write, with nothing written there, also when its parent directory
// is missing.
func TestTransferRules(t *testing.T) {
	h := newHarness(t)
	box := uniqueName("xrule")
	h.create(box, "sleep", "1000000")
	sh := func(script string) result {
		return h.mustRun(t, "sandbox", "exec", box, "--", "sh", "-c", script)
	}
	src := filepath.Join(t.TempDir(), "up.txt")
	if err := os.WriteFile(src, []byte("uploaded\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.mustRun(t, "sandbox", "upload", box, src, "/sandbox/up.txt")
	if d := driver(); d == "docker" || d == "podman" {
		// A container's supervisor sends the bytes on the bulk socket beside its
		// gateway socket, not over its session: the gateway logs each such stream
		// when both its directions have ended, which can be just after the CLI has
		// the upload's result.
		logs, _ := filepath.Glob(filepath.Join(h.home, "s", "openshell", "*", "gateway.log"))
		bulkLogged := func() bool {
			for _, l := range logs {
				if b, _ := os.ReadFile(l); strings.Contains(string(b), "bulk stream ended") {
					return true
				}
			}
			return false
		}
		uploaded := time.Now()
		for !bulkLogged() {
			if time.Since(uploaded) > 10*time.Second {
				var said []string // what the gateway said of bulk streams instead
				for _, l := range logs {
					b, _ := os.ReadFile(l)
					for _, line := range strings.Split(string(b), "\n") {
						if strings.Contains(line, "bulk") {
							said = append(said, line)
						}
					}
				}
				t.Fatalf("the upload did not take the bulk socket (no \"bulk stream ended\" in %v; its lines on bulk streams: %q)", logs, said)
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("the gateway logged the bulk stream's end %v after the upload returned", time.Since(uploaded).Round(time.Millisecond))
	}
	if r := sh(`[ "$(cat /sandbox/up.txt)" = uploaded ] && [ "$(stat -c %u /sandbox/up.txt)" = "$(id -u)" ] && [ "$(id -u)" != 0 ] && echo owned`); strings.TrimSpace(r.stdout) != "owned" {
		t.Fatalf("the upload is not the sandbox user's file with the content sent: %q %q", r.stdout, r.stderr)
	}
	r := h.run(t.Context(), "sandbox", "upload", box, src, "/etc/up.txt")
	if r.code == 0 {
		t.Fatalf("an upload into /etc (read-only for the agent) succeeded: %s", r.stderr)
	}
	if !strings.Contains(r.stderr, "read_write") {
		t.Fatalf("the refused upload does not name filesystem.read_write: %q", r.stderr)
	}
	if c := h.run(t.Context(), "sandbox", "exec", box, "--", "test", "-e", "/etc/up.txt"); c.code == 0 {
		t.Fatal("the refused upload left /etc/up.txt")
	}
	// Below a directory that may not exist in the image (/var/tmp in the test image),
	// outside read_write: the policy is the reason given, not the missing directory.
	r = h.run(t.Context(), "sandbox", "upload", box, src, "/var/tmp/sub/up.txt")
	if r.code == 0 || !strings.Contains(r.stderr, "read_write") {
		t.Fatalf("an upload below /var/tmp (not in read_write): code %d, %q; want a refusal naming filesystem.read_write", r.code, r.stderr)
	}
}
