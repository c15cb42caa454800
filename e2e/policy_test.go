package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// gatewayHostName is the name every docker sandbox resolves to the bridge's host side
// (the driver's extra host entry): the test servers are reached through it.
const gatewayHostName = "host.openshell.internal"

// policyFilesystem is the start of every policy these tests write: the default
// policy's filesystem and Landlock sections.
const policyFilesystem = `version: 1
filesystem_policy:
  include_workdir: true
  read_only: [/usr, /lib, /lib64, /bin, /sbin, /etc, /opt, /proc, /dev/urandom, /dev/zero, /dev/random]
  read_write: [/tmp, /dev/null, /dev/tty, /dev/pts, /dev/ptmx, /dev/shm]
landlock:
  compatibility: best_effort
`

const policyTemplate = policyFilesystem + `network_policies:
  web:
    endpoints:
      - host: %[1]s
        port: %[2]d
      - host: %[1]s
        port: %[3]d
    binaries:
      - path: /usr/bin/curl
  watched:
    endpoints:
      - host: %[1]s
        port: %[4]d
        enforcement: audit
    binaries:
      - path: /usr/bin/curl
`

const laterRule = `  later:
    endpoints:
      - host: %[1]s
        port: %[2]d
`

// TestPolicyEnforcement drives the whole policy path through the real binaries on the
// docker driver: egress proxy decisions, the namespace firewall, Landlock, seccomp,
// provider credentials and a live policy update.
func TestPolicyEnforcement(t *testing.T) {
	if driver() == "vm" {
		t.Skip("the policy e2e runs on the container drivers (the VM's egress goes through its runner)")
	}
	h := newHarness(t)
	ensurePolicyImage(t)

	cert, caPEM := testCA(t, gatewayHostName)
	allowed := startCountingServer(t, "allowed", nil)
	secure := startCountingServer(t, "secure", cert)
	audited := startCountingServer(t, "audited", nil)
	denied := startCountingServer(t, "denied", nil)
	later := startCountingServer(t, "later", nil)

	dir := t.TempDir()
	pol := fmt.Sprintf(policyTemplate, gatewayHostName, allowed.port(), secure.port(), audited.port())
	polFile := writePolicy(t, dir, pol)
	const secret = "e2e-secret-4f1d9c2b7a"
	prov := uniqueName("prov")
	h.mustRun(t, "provider", "create", "--name", prov, "--type", "generic", "--credential", "API_TOKEN="+secret, "--host", gatewayHostName)

	box := uniqueName("pol")
	h.mustRun(t, "sandbox", "create", "--name", box, "--from", policyTestImage, "--timeout", "120s",
		"--policy", polFile, "--provider", prov, "--",
		"bash", "-c", "echo $$ > /tmp/main.pid; while true; do sleep 1; done")
	trustTestCA(t, box, caPEM)

	sh := func(t *testing.T, script string) result {
		t.Helper()
		return h.run(t.Context(), "sandbox", "exec", "-n", box, "--", "bash", "-c", script)
	}
	url := func(s *countingServer, scheme string) string {
		return fmt.Sprintf("%s://%s:%d/", scheme, gatewayHostName, s.port())
	}
	const pyGet = `python3 -c 'import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode().strip())
except urllib.error.HTTPError as e:
    print("status", e.code)'`

	t.Run("allowed destination passes", func(t *testing.T) {
		r := sh(t, "curl -sS -m 15 "+url(allowed, "http"))
		if r.code != 0 || strings.TrimSpace(r.stdout) != "hello-allowed" {
			t.Fatalf("curl allowed: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
		}
		if allowed.conns.Load() == 0 {
			t.Fatal("the allowed server saw no connection")
		}
	})

	t.Run("denied destination refused without a connection", func(t *testing.T) {
		r := sh(t, "curl -sS -m 15 -o /dev/null -w '%{http_code}' "+url(denied, "http"))
		if strings.TrimSpace(r.stdout) != "403" {
			t.Fatalf("curl denied: code %d stdout %q stderr %q (want status 403)", r.code, r.stdout, r.stderr)
		}
		if n := denied.conns.Load(); n != 0 {
			t.Fatalf("the denied server saw %d connections", n)
		}
	})

	t.Run("wrong binary refused", func(t *testing.T) {
		before := allowed.conns.Load()
		r := sh(t, pyGet+" "+url(allowed, "http"))
		if strings.TrimSpace(r.stdout) != "status 403" {
			t.Fatalf("python3 to curl's endpoint: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
		}
		if allowed.conns.Load() != before {
			t.Fatal("the server saw a connection from a refused binary")
		}
	})

	t.Run("audit logs but passes", func(t *testing.T) {
		r := sh(t, pyGet+" "+url(audited, "http"))
		if strings.TrimSpace(r.stdout) != "hello-audited" {
			t.Fatalf("python3 to the audited endpoint: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
		}
		waitLogs(t, h, box, fmt.Sprintf("egress audit GET %s:%d", gatewayHostName, audited.port()))
	})

	t.Run("denials are in sandbox logs", func(t *testing.T) {
		waitLogs(t, h, box, fmt.Sprintf("egress deny GET %s:%d binary=/usr/bin/curl", gatewayHostName, denied.port()))
	})

	t.Run("direct tcp bypass fails fast", func(t *testing.T) {
		before := allowed.conns.Load()
		start := time.Now()
		r := sh(t, fmt.Sprintf(`ip=$(awk '/%s/{print $1; exit}' /etc/hosts); curl --noproxy '*' -sS -m 20 http://$ip:%d/`, gatewayHostName, allowed.port()))
		took := time.Since(start)
		if r.code == 0 {
			t.Fatalf("direct connection succeeded: %q", r.stdout)
		}
		if took > 8*time.Second || strings.Contains(r.stderr, "timed out") {
			t.Fatalf("direct connection was not refused fast (%v): %s", took, r.stderr)
		}
		if allowed.conns.Load() != before {
			t.Fatal("the server saw the direct connection")
		}
	})

	t.Run("https with credential placeholder swapped", func(t *testing.T) {
		r := sh(t, `case "$API_TOKEN" in openshell-placeholder:*) ;; *) echo "API_TOKEN is not a placeholder" >&2; exit 9;; esac
curl -sS -m 15 -H "Authorization: Bearer $API_TOKEN" `+url(secure, "https"))
		if r.code != 0 || strings.TrimSpace(r.stdout) != "hello-secure" {
			t.Fatalf("curl https: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
		}
		if got := secure.lastAuth(); got != "Bearer "+secret {
			t.Fatalf("upstream Authorization = %q, want the real secret", got)
		}
	})

	t.Run("landlock refuses writes outside read_write", func(t *testing.T) {
		if r := h.mustRun(t, "sandbox", "logs", box, "--tail", "2000"); strings.Contains(r.stdout, "offers no Landlock") {
			t.Skip("this kernel (or the container engine's seccomp profile) offers no Landlock; best_effort ran without it")
		}
		r := sh(t, `touch /tmp/ok && echo tmp-ok; touch /sandbox/ok && echo workdir-ok; touch /var/tmp/outside 2>&1; echo rc=$?`)
		out := r.stdout
		if !strings.Contains(out, "tmp-ok") || !strings.Contains(out, "workdir-ok") || !strings.Contains(out, "Permission denied") || strings.Contains(out, "rc=0") {
			t.Fatalf("landlock: %q %q", out, r.stderr)
		}
	})

	t.Run("uploads land in the workdir as the sandbox user and are confined", func(t *testing.T) {
		src := filepath.Join(dir, "up.txt")
		if err := os.WriteFile(src, []byte("uploaded\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		h.mustRun(t, "sandbox", "upload", box, src, "/sandbox/up.txt")
		if r := sh(t, "cat /sandbox/up.txt"); strings.TrimSpace(r.stdout) != "uploaded" {
			t.Fatalf("uploaded file: %q %q", r.stdout, r.stderr)
		}
		if r := sh(t, `[ "$(stat -c %u /sandbox/up.txt)" = "$(id -u)" ] && echo owned`); strings.TrimSpace(r.stdout) != "owned" {
			t.Fatalf("uploaded file is not owned by the sandbox user: %q %q", r.stdout, r.stderr)
		}
		r := h.run(t.Context(), "sandbox", "upload", box, src, "/var/tmp/up.txt")
		if r.code == 0 || sh(t, "test -e /var/tmp/up.txt").code == 0 {
			t.Fatalf("upload wrote outside the policy's read_write paths (upload exit %d: %s)", r.code, r.stderr)
		}
		if !strings.Contains(r.stderr, "not writable for the agent") || !strings.Contains(r.stderr, "read_write") {
			t.Fatalf("refused upload does not say why: %q", r.stderr)
		}
	})

	t.Run("seccomp refuses ptrace", func(t *testing.T) {
		r := sh(t, `python3 -c 'import ctypes; l = ctypes.CDLL(None, use_errno=True); r = l.ptrace(0, 0, 0, 0); print(r, ctypes.get_errno())'`)
		if strings.TrimSpace(r.stdout) != "-1 1" {
			t.Fatalf("ptrace(PTRACE_TRACEME): %q %q (want -1 EPERM)", r.stdout, r.stderr)
		}
	})

	t.Run("no secret in environ, files or logs", func(t *testing.T) {
		out, err := rootExec(t, box, "",
			`grep -l -a -F '`+secret+`' /proc/[0-9]*/environ 2>/dev/null; grep -r -l -a -F '`+secret+`' / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev 2>/dev/null; true`)
		if err != nil {
			t.Fatalf("grep for the secret as root in the sandbox: %v %s", err, out)
		}
		if strings.TrimSpace(string(out)) != "" {
			t.Fatalf("the secret is readable in the sandbox: %s", out)
		}
		r := sh(t, `cat /proc/[0-9]*/environ 2>/dev/null | tr '\0' '\n' | grep -c API_TOKEN=openshell-placeholder`)
		if strings.TrimSpace(r.stdout) == "0" || strings.TrimSpace(r.stdout) == "" {
			t.Fatalf("no placeholder in the sandbox's environment: %q %q", r.stdout, r.stderr)
		}
		if l := h.mustRun(t, "sandbox", "logs", box, "--tail", "5000"); strings.Contains(l.stdout, secret) {
			t.Fatal("the secret is in the sandbox logs")
		}
	})

	t.Run("live policy update without restarting the main process", func(t *testing.T) {
		pid0 := strings.TrimSpace(sh(t, "cat /tmp/main.pid").stdout)
		r := sh(t, "curl -sS -m 15 -o /dev/null -w '%{http_code}' "+url(later, "http"))
		if strings.TrimSpace(r.stdout) != "403" || later.conns.Load() != 0 {
			t.Fatalf("before the update: %q %q (conns %d)", r.stdout, r.stderr, later.conns.Load())
		}
		pol2 := pol + fmt.Sprintf(laterRule, gatewayHostName, later.port())
		polFile2 := filepath.Join(dir, "policy2.yaml")
		if err := os.WriteFile(polFile2, []byte(pol2), 0o644); err != nil {
			t.Fatal(err)
		}
		h.mustRun(t, "policy", "set", box, "--policy", polFile2, "--wait")
		r = sh(t, "curl -sS -m 15 "+url(later, "http"))
		if strings.TrimSpace(r.stdout) != "hello-later" {
			t.Fatalf("after the update: code %d %q %q", r.code, r.stdout, r.stderr)
		}
		pid1 := strings.TrimSpace(sh(t, "cat /tmp/main.pid; kill -0 $(cat /tmp/main.pid) && echo alive").stdout)
		if pid0 == "" || pid1 != pid0+"\nalive" {
			t.Fatalf("main process changed: before %q after %q", pid0, pid1)
		}
	})
}

// waitLogs waits until the sandbox's logs contain want.
func waitLogs(t *testing.T, h *harness, box, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := h.run(t.Context(), "sandbox", "logs", box, "--tail", "2000")
		if strings.Contains(r.stdout, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox logs lack %q:\n%s", want, r.stdout)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestPolicyDefaultConfinement runs on either driver (E2E_DRIVER=vm covers the VM
// guest): a sandbox without a policy gets the default one — sessions confined
// (no_new_privs, seccomp), the proxy in the environment, and egress refused by it
// with the denial in the sandbox's logs.
func TestPolicyDefaultConfinement(t *testing.T) {
	h := newHarness(t)
	box := uniqueName("dflt")
	h.create(box, "sh", "-c", "while true; do sleep 1; done")
	r := h.mustRun(t, "sandbox", "exec", "-n", box, "--", "sh", "-c",
		`grep -E '^(NoNewPrivs|Seccomp|CapEff|CapBnd):' /proc/self/status | tr -s '\t ' ' '; echo "proxy=$HTTP_PROXY"`)
	out := r.stdout
	if !strings.Contains(out, "NoNewPrivs: 1") || !strings.Contains(out, "Seccomp: 2") || !strings.Contains(out, "proxy=http://") {
		t.Fatalf("session not confined or not pointed at the proxy:\n%s", out)
	}
	// No capability now, and none to regain: the bounding set is empty too.
	if !strings.Contains(out, "CapEff: 0000000000000000") || !strings.Contains(out, "CapBnd: 0000000000000000") {
		t.Fatalf("session keeps capabilities:\n%s", out)
	}
	if driver() == "vm" && !strings.Contains(out, "proxy=http://127.0.0.1:3128") {
		t.Fatalf("VM guest proxy address: %s", out)
	}
	// A raw proxy request (the test image's busybox wget cannot resolve names).
	r = h.run(t.Context(), "sandbox", "exec", "-n", box, "--", "sh", "-c",
		`p=${HTTP_PROXY#http://}; printf 'GET http://blocked.example.com/ HTTP/1.1\r\nHost: blocked.example.com\r\nConnection: close\r\n\r\n' | nc -w 10 ${p%:*} ${p##*:} | head -1`)
	if !strings.Contains(r.stdout, " 403 ") {
		t.Fatalf("default policy: proxy answered %q %q, want 403", r.stdout, r.stderr)
	}
	waitLogs(t, h, box, "egress deny GET blocked.example.com:80")
}
