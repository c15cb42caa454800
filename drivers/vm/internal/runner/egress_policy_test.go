package runner

import (
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
)

// TestEgressSandboxPolicyRecheck: with the sandbox's policy known, the runner refuses
// a CONNECT whose destination the policy does not name (403, and the target sees no
// connection) and lets a named one through, on top of the static guard.
func TestEgressSandboxPolicyRecheck(t *testing.T) {
	port, accepted := startHiTarget(t)
	pol := fmt.Sprintf("version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - host: localhost\n        port: %d\n", port)

	c, err := compileYAML([]byte(pol))
	if err != nil {
		t.Fatal(err)
	}
	sock := serveTestRelay(t, EgressPolicy{AllowPrivate: true}, c)

	connect := func(name string, p int) int {
		t.Helper()
		resp, c, _ := egressDo(t, sock, fmt.Sprintf("CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-Openshell-Host: %s\r\n\r\n", p, p, name))
		c.Close()
		return resp.StatusCode
	}
	if code := connect("other.test", port); code != 403 {
		t.Fatalf("unnamed host: status %d, want 403", code)
	}
	if code := connect("localhost", port+1); code != 403 {
		t.Fatalf("named host on another port: status %d, want 403", code)
	}
	if code := connect("127.0.0.2", port); code != 403 {
		t.Fatalf("IP host not named: status %d, want 403", code)
	}
	// A named host goes only to the addresses the host resolves for it: a guest
	// claiming "localhost" for another address is refused before any dial.
	resp, conn, _ := egressDo(t, sock, fmt.Sprintf("CONNECT 192.0.2.1:%d HTTP/1.1\r\nHost: 192.0.2.1:%d\r\nX-Openshell-Host: localhost\r\n\r\n", port, port))
	body, _ := io.ReadAll(resp.Body)
	conn.Close()
	if resp.StatusCode != 403 || !strings.Contains(string(body), "not one of localhost's") {
		t.Fatalf("named host at a foreign address: %d %q, want 403", resp.StatusCode, body)
	}
	if n := accepted.Load(); n != 0 {
		t.Fatalf("the target saw %d connections from refused CONNECTs", n)
	}
	if code := connect("localhost", port); code != 200 {
		t.Fatalf("named destination: status %d, want 200", code)
	}

	// A policy that does not parse is refused, not ignored.
	if _, err := compileYAML([]byte("version: 7\n")); err == nil {
		t.Fatal("a bad policy was accepted")
	}
}

// startHiTarget runs a TCP server on loopback until the test ends that answers
// every connection with "hi" and counts them; it returns its port and the count.
func startHiTarget(t *testing.T) (int, *atomic.Int64) {
	t.Helper()
	target, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { target.Close() })
	accepted := &atomic.Int64{}
	go func() {
		for {
			c, err := target.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	return target.Addr().(*net.TCPAddr).Port, accepted
}
