package egress

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openshell/openshell/supervisor/policy"
)

// startRelay runs the runner side on a Unix socket (what a hybrid-vsock backend
// exposes on the host) and returns a guest-side Dial for it.
func startRelay(t *testing.T, pol *policy.Compiled) (*Relay, *events, func(context.Context, string, string) (net.Conn, error), func(context.Context) (net.Conn, error)) {
	ev := &events{}
	r := NewRelay(pol)
	r.OnEvent = ev.add
	_, open := serveRelay(t, r)
	return r, ev, RunnerDialer(open), open
}

// serveRelay serves r on a fresh Unix socket until the test ends; it returns the
// socket path and an opener for guest streams.
func serveRelay(t *testing.T, r *Relay) (string, func(context.Context) (net.Conn, error)) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "egress.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("relay Serve: %v", err)
		}
	})
	return sock, func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}
}

// relayDo sends one raw request on a new stream to the relay at sock and returns the
// answer's status and body.
func relayDo(t *testing.T, sock, req string) (int, string) {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("answer to %q: %v", req, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// logBuf collects a relay's log lines.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *logBuf) String() string              { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

func (e *events) count() int { e.mu.Lock(); defer e.mu.Unlock(); return len(e.evs) }

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
	r := NewRelay(compile(t, "version: 1\nnetwork_policies:\n  w:\n    endpoints: [{host: '*.example.com', port: 443}]\n"))
	r.Resolver = staticResolver{"api.example.com": {netip.MustParseAddr("93.184.215.7"), netip.MustParseAddr("2606:2800::7")}}
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
	if err != nil || len(addrs) != 2 || addrs[0] != netip.MustParseAddr("93.184.215.7") {
		t.Fatalf("resolve: %v %v", addrs, err)
	}
	var dnsErr *net.DNSError
	if _, err := res.LookupNetIP(t.Context(), "ip", "nope.example.com"); !errors.As(err, &dnsErr) {
		t.Fatalf("unknown name: %v", err)
	}
}

func resolveReq(name string) string {
	return "GET /v1/resolve?name=" + url.QueryEscape(name) + " HTTP/1.1\r\nHost: runner\r\n\r\n"
}

// TestRelayResolveChecksPolicy: over a real Unix socket, a lookup is refused with 503
// until the relay knows a policy; then a name some endpoint names gets the resolver's
// answer unchanged, a name none names gets 403 naming the host (an event and a log
// line, like a refused CONNECT), and addresses the SSRF guard refuses are left out of
// the answer unless the endpoint names the host exactly or lists them in allowed_ips.
func TestRelayResolveChecksPolicy(t *testing.T) {
	var cur atomic.Pointer[policy.Compiled]
	logs := &logBuf{}
	ev := &events{}
	a := netip.MustParseAddr
	r := &Relay{Policy: cur.Load, OnEvent: ev.add, Logger: slog.New(slog.NewTextHandler(logs, nil)),
		Resolver: staticResolver{
			"api.example.com":   {a("93.184.215.7"), a("2606:2800::7")},
			"mixed.example.com": {a("10.0.0.5"), a("93.184.215.9")},
			"inner.example.com": {a("10.0.0.5"), a("169.254.169.254")},
			"db.internal.test":  {a("10.0.0.6")},
			"svc.test":          {a("10.2.0.1"), a("10.1.2.3")},
			"other.test":        {a("93.184.215.1")},
		}}
	sock, open := serveRelay(t, r)
	res := RunnerResolver{Open: open}

	// No policy yet: 503 for lookups and CONNECTs alike.
	if code, body := relayDo(t, sock, resolveReq("api.example.com")); code != 503 || !strings.Contains(body, "not known yet") {
		t.Fatalf("lookup before the policy: %d %q", code, body)
	}
	if e := ev.last(t); e.Method != "RESOLVE" || e.Status != 503 || e.Action != "error" {
		t.Fatalf("event before the policy: %+v", e)
	}
	if code, _ := relayDo(t, sock, "CONNECT 93.184.215.7:443 HTTP/1.1\r\nX-Openshell-Host: api.example.com\r\n\r\n"); code != 503 {
		t.Fatalf("CONNECT before the policy: %d", code)
	}
	if _, err := res.LookupNetIP(t.Context(), "ip", "api.example.com"); err == nil {
		t.Fatal("RunnerResolver got an answer before the policy")
	}

	cur.Store(compile(t, `version: 1
network_policies:
  w:
    endpoints:
      - {host: '*.example.com', port: 443}
      - {host: db.internal.test, port: 5432}
      - {host: svc.test, ports: [8443, 9443], allowed_ips: [10.1.0.0/16]}
`))
	// Allowed: the resolver's answer, unchanged (order and both families).
	if code, body := relayDo(t, sock, resolveReq("api.example.com")); code != 200 || body != `{"addrs":["93.184.215.7","2606:2800::7"]}` {
		t.Fatalf("allowed lookup: %d %q", code, body)
	}
	// Names match as in a CONNECT (case and a trailing dot do not matter): this
	// spelling is allowed, so the resolver is asked, and does not know it.
	var dnsErr *net.DNSError
	if _, err := res.LookupNetIP(t.Context(), "ip", "API.example.com."); !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
		t.Fatalf("allowed variant spelling: %v", err)
	}

	// Refused: no endpoint names the host, on any port; the resolver is not asked.
	nev := ev.count()
	for _, name := range []string{"other.test", "a.b.example.com", "example.com", "93.184.215.1"} {
		code, body := relayDo(t, sock, resolveReq(name))
		if code != 403 || !strings.Contains(body, "no network_policies endpoint") || !strings.Contains(body, "host "+name) {
			t.Errorf("lookup of %s: %d %q", name, code, body)
		}
	}
	if e := ev.last(t); e.Method != "RESOLVE" || e.Action != "deny" || e.Status != 403 || e.Host != "93.184.215.1" {
		t.Fatalf("refused lookup event: %+v", e)
	}
	if n := ev.count() - nev; n != 4 {
		t.Fatalf("%d events for 4 refused lookups", n)
	}
	if l := logs.String(); !strings.Contains(l, "method=RESOLVE host=other.test") || !strings.Contains(l, "status=403") {
		t.Fatalf("refused lookup not logged:\n%s", l)
	}
	_, err := res.LookupNetIP(t.Context(), "ip", "other.test")
	if !errors.As(err, &dnsErr) || dnsErr.IsNotFound || !strings.Contains(dnsErr.Err, "no network_policies endpoint") {
		t.Fatalf("RunnerResolver on a refused name: %#v", err)
	}

	// Addresses the CONNECT path would refuse are not handed out.
	for _, tc := range []struct {
		name string
		code int
		want string
	}{
		{"mixed.example.com", 200, `{"addrs":["93.184.215.9"]}`},       // wildcard: internal address dropped
		{"inner.example.com", 403, "internal address 169.254.169.254"}, // wildcard: only internal ones
		{"db.internal.test", 200, `{"addrs":["10.0.0.6"]}`},            // explicit host may be internal
		{"svc.test", 200, `{"addrs":["10.1.2.3"]}`},                    // allowed_ips decide
		{"nope.example.com", 502, "no such host"},                      // allowed, but unknown
	} {
		code, body := relayDo(t, sock, resolveReq(tc.name))
		if code != tc.code || !strings.Contains(body, tc.want) {
			t.Errorf("lookup of %s: %d %q, want %d %q", tc.name, code, body, tc.code, tc.want)
		}
	}

	// A Guard replaces the SSRF guard for lookups as for CONNECTs: here no private
	// address at all, whatever the policy names.
	r2 := &Relay{Policy: cur.Load, Resolver: r.Resolver, Logger: r.Logger,
		Guard: func(ip netip.Addr, _ policy.Decision) error {
			if ip.IsPrivate() {
				return fmt.Errorf("operator guard: %s is private", ip)
			}
			return nil
		}}
	sock2, _ := serveRelay(t, r2)
	if code, body := relayDo(t, sock2, resolveReq("db.internal.test")); code != 403 || !strings.Contains(body, "operator guard") {
		t.Fatalf("guarded lookup: %d %q", code, body)
	}
	if code, body := relayDo(t, sock2, "CONNECT 10.0.0.6:5432 HTTP/1.1\r\nX-Openshell-Host: db.internal.test\r\n\r\n"); code != 403 || !strings.Contains(body, "operator guard") {
		t.Fatalf("guarded CONNECT: %d %q", code, body)
	}
	if code, _ := relayDo(t, sock2, resolveReq("api.example.com")); code != 200 {
		t.Fatalf("guarded public lookup: %d", code)
	}
}

// TestRelayNameThroughGuestProxy runs the whole VM path in one process over real
// sockets: an agent asks the guest proxy for a name, the proxy looks it up through
// RunnerResolver and connects through RunnerDialer, both served by a Relay. When the
// relay's policy stops naming the host, the lookup is refused outside the guest (the
// guest's own policy still allows it) and the server sees nothing.
func TestRelayNameThroughGuestProxy(t *testing.T) {
	plain := startUpstream(t, "127.0.0.2", false, nil)
	doc := fmt.Sprintf("version: 1\nnetwork_policies:\n  t:\n    endpoints: [{host: svc.example.test, port: %d}]\n    binaries: [{path: %s}]\n", plain.port, self(t))
	ev := &events{}
	r := NewRelay(compile(t, doc))
	r.OnEvent = ev.add
	r.Resolver = staticResolver{"svc.example.test": {netip.MustParseAddr(plain.host)}}
	_, open := serveRelay(t, r)
	_, purl, _ := startProxy(t, Config{Policy: compile(t, doc), Dial: RunnerDialer(open), Resolver: RunnerResolver{Open: open}})
	c := client(purl, nil)
	u := fmt.Sprintf("http://svc.example.test:%d/", plain.port)
	if code, body := get(t, c, u); code != 200 || !strings.Contains(body, "hello from svc.example.test") {
		t.Fatalf("by name through the relay: %d %q", code, body)
	}
	if e := ev.last(t); e.Method != "RELAY" || e.Action != "allow" || e.Host != "svc.example.test" {
		t.Fatalf("relay event: %+v", e)
	}
	before := plain.conns.Load()
	r.SetPolicy(policy.MustCompile(policy.Default()))
	code, body := get(t, c, u)
	if code != 403 || !strings.Contains(body, "no network_policies endpoint of the sandbox policy allows host svc.example.test") {
		t.Fatalf("lookup refused by the relay: %d %q", code, body)
	}
	if e := ev.last(t); e.Method != "RESOLVE" || e.Action != "deny" || e.Host != "svc.example.test" {
		t.Fatalf("relay event: %+v", e)
	}
	if plain.conns.Load() != before {
		t.Fatal("a refused lookup still reached the server")
	}
}

// TestRelayServeClosesTunnels: ending Serve's context closes open tunnels, so Serve
// returns even while an upstream keeps its connection idle.
func TestRelayServeClosesTunnels(t *testing.T) {
	up, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	held := make(chan net.Conn, 1)
	go func() {
		if c, err := up.Accept(); err == nil {
			held <- c // idle: never writes, never closes
		}
	}()
	port := up.Addr().(*net.TCPAddr).Port
	r := NewRelay(compile(t, fmt.Sprintf("version: 1\nnetwork_policies:\n  w:\n    endpoints: [{host: 127.0.0.2, port: %d}]\n", port)))
	sock := filepath.Join(t.TempDir(), "e.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx, ln) }()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "CONNECT 127.0.0.2:%d HTTP/1.1\r\n\r\n", port)
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	uc := <-held
	defer uc.Close()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return with a tunnel open after its context ended")
	}
	uc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := uc.Read(make([]byte, 1)); err == nil {
		t.Fatal("the upstream connection is still open")
	}
}

// FuzzRelayRequest feeds one guest stream to a relay that knows the policy and to one
// that does not yet. Whatever the bytes: every answer is HTTP, no tunnel opens (there
// is no network), a relay without a policy never answers 200, and a 200 lookup answer
// is only for a name the policy names, with addresses the SSRF guard accepts.
func FuzzRelayRequest(f *testing.F) {
	f.Add([]byte("CONNECT 127.0.0.2:80 HTTP/1.1\r\nX-Openshell-Host: a.example.com\r\n\r\n"))
	f.Add([]byte("CONNECT [::1]:443 HTTP/1.1\r\n\r\n"))
	f.Add([]byte("CONNECT [fe80::1%eth0]:80 HTTP/1.1\r\nX-Openshell-Host: [fe80::1]\r\n\r\n"))
	f.Add([]byte("CONNECT a.example.com:80 HTTP/1.1\r\n\r\n"))
	f.Add([]byte("GET /v1/resolve?name=a.example.com HTTP/1.1\r\n\r\n"))
	f.Add([]byte("GET /v1/resolve?name=mixed.example.com HTTP/1.1\r\n\r\n"))
	f.Add([]byte("GET /v1/resolve?name=93.184.215.1&name=x HTTP/1.1\r\n\r\n"))
	f.Add([]byte("GET /v1/resolve?name=A.EXAMPLE.COM. HTTP/1.1\r\n\r\n"))
	f.Add([]byte("GET /v1/resolve?name=%00 HTTP/1.1\r\n\r\n"))
	f.Add([]byte("GET /v1/resolve HTTP/1.1\r\n\r\n"))
	f.Add([]byte("garbage\n"))
	pol := compile(f, "version: 1\nnetwork_policies:\n  w:\n    endpoints: [{host: '*.example.com', port: 80}, {host: 93.184.215.1, port: 80}]\n")
	res := staticResolver{
		"a.example.com":     {netip.MustParseAddr("93.184.215.1")},
		"mixed.example.com": {netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("93.184.215.2")},
	}
	noDial := func(context.Context, string, string) (net.Conn, error) { return nil, fmt.Errorf("fuzz: no network") }
	quiet := slog.New(slog.DiscardHandler)
	known := &Relay{Policy: func() *policy.Compiled { return pol }, Dial: noDial, Resolver: res, Logger: quiet}
	unknown := &Relay{Policy: func() *policy.Compiled { return nil }, Dial: noDial, Resolver: res, Logger: quiet}
	serve := func(r *Relay, data []byte) []byte {
		srv, cli := net.Pipe()
		done := make(chan []byte)
		go func() { b, _ := io.ReadAll(cli); done <- b }()
		r.ServeConn(context.Background(), &pipeConn{Conn: srv, in: bytes.NewReader(data)})
		return <-done
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		req, _ := http.ReadRequest(bufio.NewReader(bytes.NewReader(data)))
		for _, r := range []*Relay{known, unknown} {
			out := serve(r, data)
			if len(out) == 0 {
				continue
			}
			if !bytes.HasPrefix(out, []byte("HTTP/1.1 ")) {
				t.Fatalf("answer %q", out)
			}
			if bytes.HasPrefix(out, []byte("HTTP/1.1 200 Connection established")) {
				t.Fatalf("tunnel opened without a network for %q", data)
			}
			if !bytes.HasPrefix(out, []byte("HTTP/1.1 200 ")) {
				continue
			}
			if r == unknown {
				t.Fatalf("200 without a policy for %q: %q", data, out)
			}
			// A 200 is a lookup answer: the name must be one the policy names and
			// the answer free of internal addresses.
			if req == nil {
				t.Fatalf("200 for a request that does not parse: %q", data)
			}
			name := req.URL.Query().Get("name")
			if len(nameDecisions(pol, name)) == 0 {
				t.Fatalf("lookup of %q answered although no endpoint names it: %q", name, out)
			}
			i := bytes.Index(out, []byte("\r\n\r\n"))
			var ans struct{ Addrs []string }
			if err := json.Unmarshal(out[i+4:], &ans); err != nil {
				t.Fatalf("lookup answer %q: %v", out, err)
			}
			for _, s := range ans.Addrs {
				if IsInternal(netip.MustParseAddr(s), nil) {
					t.Fatalf("lookup of %q handed out internal %s", name, s)
				}
			}
		}
	})
}

// swappableResolver answers from a map the test can replace (a resolver that
// rotates its answers).
type swappableResolver struct {
	cur atomic.Pointer[staticResolver]
}

func (s *swappableResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	return s.cur.Load().LookupNetIP(ctx, network, host)
}

// A CONNECT naming a host goes only to an address the relay resolved for that host:
// one it handed out in a lookup (even if the resolver answers differently since) or
// one the resolver gives now. Any other address is refused before a dial.
func TestRelayPinsNamesToTheirAddresses(t *testing.T) {
	a := netip.MustParseAddr
	res := &swappableResolver{}
	res.cur.Store(&staticResolver{"api.example.com": {a("93.184.215.7")}})
	var dials []string
	var mu sync.Mutex
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		dials = append(dials, addr)
		mu.Unlock()
		srv, cli := net.Pipe()
		go func() { srv.Write([]byte("hi")); srv.Close() }()
		return cli, nil
	}
	r := &Relay{Policy: func() *policy.Compiled {
		return compile(t, "version: 1\nnetwork_policies:\n  w:\n    endpoints: [{host: api.example.com, port: 443}]\n")
	}, Resolver: res, Dial: dial, Logger: slog.New(slog.DiscardHandler)}
	sock, _ := serveRelay(t, r)
	connect := func(ip string) (int, string) {
		return relayDo(t, sock, "CONNECT "+ip+":443 HTTP/1.1\r\nX-Openshell-Host: api.example.com\r\n\r\n")
	}
	if code, body := relayDo(t, sock, resolveReq("api.example.com")); code != 200 || !strings.Contains(body, "93.184.215.7") {
		t.Fatalf("lookup: %d %q", code, body)
	}
	res.cur.Store(&staticResolver{"api.example.com": {a("93.184.215.8")}}) // the answer rotates
	if code, body := connect("93.184.215.7"); code != 200 {
		t.Fatalf("CONNECT to the address the lookup handed out: %d %q", code, body)
	}
	if code, body := connect("93.184.215.8"); code != 200 {
		t.Fatalf("CONNECT to the resolver's current address: %d %q", code, body)
	}
	code, body := connect("93.184.214.9")
	if code != 403 || !strings.Contains(body, "not one of api.example.com's") {
		t.Fatalf("CONNECT claiming api.example.com for another address: %d %q, want 403", code, body)
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(dials, " ") != "93.184.215.7:443 93.184.215.8:443" {
		t.Fatalf("dials = %v; the refused address must never be dialled", dials)
	}
}

func TestPinsBounded(t *testing.T) {
	var p pins
	now := time.Now()
	ip := netip.MustParseAddr("93.184.215.1")
	for i := range maxPinned + 10 {
		p.add(fmt.Sprintf("h%d.example", i), []netip.Addr{ip}, now)
	}
	if n := len(p.m); n > maxPinned {
		t.Fatalf("%d names remembered, bound %d", n, maxPinned)
	}
	p.add("API.Example.com.", []netip.Addr{ip}, now)
	if !p.has("api.example.com", ip, now) {
		t.Fatal("names are not compared case-insensitively without the trailing dot")
	}
	if p.has("api.example.com", ip, now.Add(pinTTL+time.Second)) {
		t.Fatal("a pin outlived its TTL")
	}
}
