package e2e

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
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

// TestSocketVsTCPExecTiming (scripts/bench.sh cliapi) times `sandbox exec -- true`, a
// whole CLI process, over the local socket and over TCP with mTLS (the socket record
// removed) against one Docker sandbox, and prints both p50s and their ratio.
func TestSocketVsTCPExecTiming(t *testing.T) {
	if os.Getenv("OPENSHELL_BENCH") != "1" {
		t.Skip("benchmark: run through scripts/bench.sh cliapi (OPENSHELL_BENCH=1)")
	}
	h := newHarness(t)
	box := uniqueName("usbench")
	h.create(box, "sleep", "infinity")
	record := filepath.Join(h.home, "config", "openshell", "gateways", "default", "socket")
	saved, err := os.ReadFile(record)
	if err != nil {
		t.Fatal(err)
	}
	const n = 15
	timeExec := func() time.Duration {
		h.mustRun(t, "sandbox", "exec", "-n", box, "--", "true") // warm
		d := make([]time.Duration, n)
		for i := range d {
			d[i] = h.mustRun(t, "sandbox", "exec", "-n", box, "--", "true").took
		}
		slices.Sort(d)
		return d[n/2]
	}
	unix := timeExec()
	if err := os.Remove(record); err != nil {
		t.Fatal(err)
	}
	tcp := timeExec()
	if err := os.WriteFile(record, saved, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Logf("sandbox exec -- true p50 (whole CLI process): unix %v, tcp+mTLS %v, unix/tcp %.2f×", unix, tcp, float64(unix)/float64(tcp))
}
