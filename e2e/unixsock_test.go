package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// The CLI talks to a local gateway over its Unix socket: `gateway start` records it,
// and with the client certificate and key removed from the registration (so TCP with
// mTLS cannot work) create, exec and delete still succeed. The socket is 0600 and
// owned by the gateway's user, and a sandbox cannot see it.
func TestCLIOverUnixSocket(t *testing.T) {
	h := newHarness(t)
	reg := filepath.Join(h.home, "config", "openshell", "gateways", "default")
	b, err := os.ReadFile(filepath.Join(reg, "socket"))
	if err != nil {
		t.Fatalf("gateway start recorded no socket: %v", err)
	}
	sock, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "unix://")
	if !ok || !filepath.IsAbs(sock) {
		t.Fatalf("socket record %q", b)
	}
	st, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 || st.Sys().(*syscall.Stat_t).Uid != uint32(os.Geteuid()) {
		t.Fatalf("socket %s: %v uid %d, want a 0600 socket of uid %d", sock, st.Mode(), st.Sys().(*syscall.Stat_t).Uid, os.Geteuid())
	}
	for _, f := range []string{"client.crt", "client.key"} {
		if err := os.Remove(filepath.Join(reg, f)); err != nil {
			t.Fatal(err)
		}
	}

	box := uniqueName("usock")
	h.create(box, "sleep", "infinity")
	r := h.mustRun(t, "sandbox", "exec", "-n", box, "--", "sh", "-c", "echo over-socket; test -e "+sock+" && echo SOCKET-VISIBLE; exit 0")
	if strings.TrimSpace(r.stdout) != "over-socket" {
		t.Fatalf("exec over the socket: %q", r.stdout)
	}
	h.mustRun(t, "sandbox", "delete", box)
	if r := h.mustRun(t, "sandbox", "list", "-o", "json"); strings.Contains(r.stdout, box) {
		t.Fatalf("deleted sandbox still listed: %s", r.stdout)
	}
}
