package vm_test

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openshell/openshell/internal/testenv/vmhost"
)

// egressPolicy allows one host test server (by IP and port) and nothing else; the
// filesystem part lets exec sessions read /sys (for the NIC listing).
const egressPolicy = `version: 1
filesystem_policy:
  include_workdir: true
  read_only: [/usr, /bin, /sbin, /etc, /proc, /sys, /dev/urandom, /dev/zero, /dev/random]
  read_write: [/tmp, /dev/null, /dev/tty, /dev/pts, /dev/ptmx, /dev/shm]
landlock:
  compatibility: best_effort
network_policies:
  allowed:
    endpoints:
      - host: 127.0.0.1
        port: %[1]d
      # By name: the guest has no resolver of its own; the name is looked up on
      # the host through the runner, which checks it against this policy too.
      - host: localhost
        port: %[1]d
`

// countingServer is an HTTP server on the host's loopback that counts the TCP
// connections it accepted.
type countingServer struct {
	ln    net.Listener
	conns atomic.Int64
}

func startCountingServer(t *testing.T, body string) *countingServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &countingServer{ln: ln}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, body) }),
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				s.conns.Add(1)
			}
		},
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return s
}

func (s *countingServer) port() int { return s.ln.Addr().(*net.TCPAddr).Port }

// TestVMEgressNoNIC: a VM guest has no network interface but loopback; its programs
// reach the network only through the supervisor's proxy, whose upstream is the host
// runner over the vsock channel. The sandbox policy allows one host server and not
// another: the allowed request passes, the other is answered 403 by the proxy and its
// server never sees a connection.
func TestVMEgressNoNIC(t *testing.T) {
	if testing.Short() {
		t.Skip("builds every binary and boots a VM")
	}
	vmhost.Require(t)
	busybox := requireStaticBusybox(t)

	allowed := startCountingServer(t, "hello-allowed")
	denied := startCountingServer(t, "hello-denied")

	e := newEnv(t)
	image := e.buildImage(busybox)
	port := freePort(t)
	cfg := filepath.Join(e.tmp, "gateway.toml")
	// The test servers listen on the host's loopback, which the runner's static guard
	// refuses unless allowed: the sandbox policy is then what tells them apart.
	os.WriteFile(cfg, []byte("[drivers.vm]\ncpus = 1\nmemory_mib = 512\negress_allow_private = true\n"), 0o600)
	e.cli("gateway", "start", "--drivers", "vm", "--port", strconv.Itoa(port), "--state-dir", e.gwState, "--config", cfg)
	t.Cleanup(func() {
		e.cliMayFail("gateway", "stop")
		e.killLeftovers()
	})
	polFile := filepath.Join(e.tmp, "policy.yaml")
	if err := os.WriteFile(polFile, []byte(fmt.Sprintf(egressPolicy, allowed.port())), 0o644); err != nil {
		t.Fatal(err)
	}
	const box = "e2e-vm-egress"
	t0 := time.Now()
	e.cli("sandbox", "create", "--name", box, "--from", image, "--policy", polFile, "--timeout", cliTimeout.String(), "--", "sleep", "1000000")
	t.Logf("create → Ready took %v", time.Since(t0))
	t.Cleanup(func() { e.cliMayFail("sandbox", "delete", box) })

	sh := func(script string) (string, error) {
		out, err := e.run("sandbox", "exec", "-n", box, "--", "sh", "-c", script)
		t.Logf("$ %s\n%s", script, out)
		return out, err
	}

	t.Run("no NIC but lo", func(t *testing.T) {
		out, err := sh("ls /sys/class/net")
		if err != nil {
			t.Fatalf("ls /sys/class/net: %v\n%s", err, out)
		}
		if f := strings.Fields(out); len(f) != 1 || f[0] != "lo" {
			t.Fatalf("guest interfaces %q, want only lo", f)
		}
	})

	// A raw request to the proxy named in the environment (busybox wget crashes on
	// refused connections, nc does not).
	get := func(s *countingServer) string {
		return fmt.Sprintf(`p=${HTTP_PROXY#http://}; p=${p%%/}; printf 'GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n' | nc -w 15 ${p%%:*} ${p##*:}`, s.port(), s.port())
	}
	t.Run("allowed server reached through the proxy", func(t *testing.T) {
		out, err := sh(get(allowed))
		if err != nil || !strings.Contains(out, " 200 ") || !strings.Contains(out, "hello-allowed") {
			t.Fatalf("allowed request: %v\n%s", err, out)
		}
		if allowed.conns.Load() == 0 {
			t.Fatal("the allowed server saw no connection")
		}
	})
	t.Run("allowed server reached by name", func(t *testing.T) {
		before := allowed.conns.Load()
		script := fmt.Sprintf(`p=${HTTP_PROXY#http://}; p=${p%%/}; printf 'GET http://localhost:%d/ HTTP/1.1\r\nHost: localhost:%d\r\nConnection: close\r\n\r\n' | nc -w 15 ${p%%:*} ${p##*:}`, allowed.port(), allowed.port())
		out, err := sh(script)
		if err != nil || !strings.Contains(out, " 200 ") || !strings.Contains(out, "hello-allowed") {
			t.Fatalf("request by name: %v\n%s", err, out)
		}
		if allowed.conns.Load() == before {
			t.Fatal("the allowed server saw no new connection")
		}
	})
	t.Run("denied server refused with 403 and never connected", func(t *testing.T) {
		out, _ := sh(get(denied))
		if first, _, _ := strings.Cut(out, "\n"); !strings.Contains(first, " 403 ") {
			t.Fatalf("denied request answered %q, want 403", out)
		}
		if strings.Contains(out, "hello-denied") {
			t.Fatal("the denied server's body reached the guest")
		}
		if n := denied.conns.Load(); n != 0 {
			t.Fatalf("the denied server saw %d connections", n)
		}
	})
	t.Run("direct connection without the proxy fails", func(t *testing.T) {
		before := allowed.conns.Load()
		out, _ := sh(fmt.Sprintf(`printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 127.0.0.1 %d; echo rc=$?`, allowed.port()))
		if strings.Contains(out, "hello-allowed") || allowed.conns.Load() != before {
			t.Fatalf("a direct connection from the guest reached the host server:\n%s", out)
		}
	})

	e.deleteAndCheckClean(t, box)
}
