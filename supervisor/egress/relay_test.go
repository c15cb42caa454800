package egress

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/openshell/openshell/supervisor/policy"
)

// startRelay runs the runner side on a Unix socket (what a hybrid-vsock backend
// exposes on the host) and returns a guest-side Dial for it.
func startRelay(t *testing.T, pol *policy.Compiled) (*Relay, *events, func(context.Context, string, string) (net.Conn, error), func(context.Context) (net.Conn, error)) {
	sock := filepath.Join(t.TempDir(), "egress.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ev := &events{}
	r := NewRelay(pol)
	r.OnEvent = ev.add
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("relay Serve: %v", err)
		}
	})
	open := func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}
	return r, ev, RunnerDialer(open), open
}

func TestRelayAllowsAndRechecks(t *testing.T) {
	plain := startUpstream(t, "127.0.0.2", false, nil)
	allow := compile(t, fmt.Sprintf("version: 1\nnetwork_policies:\n  t:\n    endpoints: [{host: %s, port: %d}]\n    binaries: [{path: %s}]\n", plain.host, plain.port, self(t)))
	relay, rev, dial, _ := startRelay(t, allow)
	_, purl, gev := startProxy(t, Config{Policy: allow, Dial: dial})
	c := client(purl, nil)
	if code, body := get(t, c, plain.srv.URL); code != 200 || !strings.Contains(body, "hello") {
		t.Fatalf("through relay: %d %q", code, body)
	}
	if e := rev.last(t); e.Action != "allow" || e.Method != "RELAY" || e.Host != plain.host {
		t.Fatalf("runner event: %+v", e)
	}
	if e := gev.last(t); e.Action != "allow" {
		t.Fatalf("guest event: %+v", e)
	}
	// The runner's policy no longer allows it (a guest that did not get the update,
	// or lies): refused outside the VM, the server sees nothing new.
	before := plain.conns.Load()
	relay.SetPolicy(policy.MustCompile(policy.Default()))
	code, body := get(t, c, plain.srv.URL)
	if code != 502 || !strings.Contains(body, "runner refused") || !strings.Contains(body, "403") {
		t.Fatalf("runner re-check: %d %q", code, body)
	}
	if plain.conns.Load() != before {
		t.Fatal("refused relay reached the server")
	}
	if e := rev.last(t); e.Action != "deny" {
		t.Fatalf("runner event: %+v", e)
	}
}

func TestRelayRefusesForgedRequests(t *testing.T) {
	plain := startUpstream(t, "127.0.0.2", false, nil)
	pol := compile(t, fmt.Sprintf("version: 1\nnetwork_policies:\n  w:\n    endpoints: [{host: '*.example.com', port: %d}, {host: 127.0.0.2, port: %d}]\n", plain.port, plain.port))
	_, _, dial, _ := startRelay(t, pol)
	for _, tc := range []struct{ host, addr, want string }{
		{"evil.example.com", fmt.Sprintf("127.0.0.2:%d", plain.port), "internal address"},
		{"127.0.0.2", fmt.Sprintf("127.0.0.3:%d", plain.port), "does not match"},
		{"evil.example.com", fmt.Sprintf("169.254.169.254:%d", plain.port), "internal address"},
		{"other.test", fmt.Sprintf("127.0.0.2:%d", plain.port), "no network_policies endpoint"},
	} {
		_, err := dial(dialWithHost(t.Context(), tc.host), "tcp", tc.addr)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s → %s: got %v, want %q", tc.host, tc.addr, err, tc.want)
		}
	}
	if n := plain.conns.Load(); n != 0 {
		t.Fatalf("forged requests reached the server: %d", n)
	}
	conn, err := dial(dialWithHost(t.Context(), "127.0.0.2"), "tcp", fmt.Sprintf("127.0.0.2:%d", plain.port))
	if err != nil {
		t.Fatalf("explicit IP: %v", err)
	}
	conn.Close()
}

func TestRunnerResolver(t *testing.T) {
	r := NewRelay(policy.MustCompile(policy.Default()))
	r.Resolver = staticResolver{"api.example.com": {netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("2001:db8::7")}}
	sock := filepath.Join(t.TempDir(), "r.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx, ln) }()
	defer func() { cancel(); <-done }()
	res := RunnerResolver{Open: func(ctx context.Context) (net.Conn, error) { return (&net.Dialer{}).DialContext(ctx, "unix", sock) }}
	addrs, err := res.LookupNetIP(t.Context(), "ip", "api.example.com")
	if err != nil || len(addrs) != 2 || addrs[0] != netip.MustParseAddr("192.0.2.7") {
		t.Fatalf("resolve: %v %v", addrs, err)
	}
	var dnsErr *net.DNSError
	if _, err := res.LookupNetIP(t.Context(), "ip", "nope.example.com"); !errors.As(err, &dnsErr) {
		t.Fatalf("unknown name: %v", err)
	}
}

func FuzzRelayRequest(f *testing.F) {
	f.Add([]byte("CONNECT 127.0.0.2:80 HTTP/1.1\r\nX-Openshell-Host: a.example.com\r\n\r\n"))
	f.Add([]byte("CONNECT [::1]:443 HTTP/1.1\r\n\r\n"))
	f.Add([]byte("GET /v1/resolve?name=a.example.com HTTP/1.1\r\n\r\n"))
	f.Add([]byte("garbage\n"))
	r := NewRelay(compile(f, "version: 1\nnetwork_policies:\n  w:\n    endpoints: [{host: '*.example.com', port: 80}, {host: 192.0.2.1, port: 80}]\n"))
	r.Dial = func(context.Context, string, string) (net.Conn, error) { return nil, fmt.Errorf("fuzz: no network") }
	r.Resolver = staticResolver{"a.example.com": {netip.MustParseAddr("192.0.2.1")}}
	f.Fuzz(func(t *testing.T, data []byte) {
		srv, cli := net.Pipe()
		done := make(chan []byte)
		go func() { b, _ := io.ReadAll(cli); done <- b }()
		r.ServeConn(context.Background(), &pipeConn{Conn: srv, in: bytes.NewReader(data)})
		if out := <-done; len(out) > 0 && !bytes.HasPrefix(out, []byte("HTTP/1.1 ")) {
			t.Fatalf("answer %q", out)
		}
	})
}
