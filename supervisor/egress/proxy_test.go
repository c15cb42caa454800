package egress

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openshell/openshell/internal/testenv"
	"github.com/openshell/openshell/supervisor/policy"
)

// upstream is a real HTTP(S) server on a 127.0.0.x address counting its connections.
type upstream struct {
	srv   *httptest.Server
	conns atomic.Int64
	host  string
	port  int
}

func startUpstream(t testing.TB, ip string, useTLS bool, h http.Handler) *upstream {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatalf("listen on %s: %v", ip, err)
	}
	u := &upstream{}
	if h == nil {
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from %s auth=%s", r.Host, r.Header.Get("Authorization"))
		})
	}
	u.srv = &httptest.Server{Listener: ln, Config: &http.Server{Handler: h, ConnState: func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			u.conns.Add(1)
		}
	}}}
	if useTLS {
		u.srv.StartTLS()
	} else {
		u.srv.Start()
	}
	t.Cleanup(u.srv.Close)
	a := ln.Addr().(*net.TCPAddr)
	u.host, u.port = a.IP.String(), a.Port
	return u
}

type events struct {
	mu  sync.Mutex
	evs []Event
}

func (e *events) add(ev Event) { e.mu.Lock(); e.evs = append(e.evs, ev); e.mu.Unlock() }
func (e *events) last(t testing.TB) Event {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.evs) == 0 {
		t.Fatal("no event recorded")
	}
	return e.evs[len(e.evs)-1]
}
func (e *events) all() []Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Event(nil), e.evs...)
}

// staticResolver stands in for DNS: the names tests need (a.example.com → 127.0.0.2)
// cannot be served by the machine's resolver without editing /etc/hosts.
type staticResolver map[string][]netip.Addr

func (s staticResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := s[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func compile(t testing.TB, doc string) *policy.Compiled {
	t.Helper()
	p, err := policy.Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return policy.MustCompile(p)
}

func startProxy(t testing.TB, cfg Config) (*Proxy, string, *events) {
	t.Helper()
	ev := &events{}
	if cfg.OnEvent == nil {
		cfg.OnEvent = ev.add
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		p.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return p, "http://" + ln.Addr().String(), ev
}

func client(proxyURL string, roots *httptest.Server) *http.Client {
	u, _ := url.Parse(proxyURL)
	tr := &http.Transport{Proxy: http.ProxyURL(u), DisableKeepAlives: true}
	if roots != nil {
		tr.TLSClientConfig = roots.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
		tr.TLSClientConfig.ServerName = "example.com" // the test certificate names 127.0.0.1 and example.com only
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func get(t *testing.T, c *http.Client, u string) (int, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) && strings.Contains(err.Error(), "Forbidden") {
			return http.StatusForbidden, err.Error()
		}
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func self(t testing.TB) string {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

func TestAllowedHTTPAndHTTPS(t *testing.T) {
	plain := startUpstream(t, "127.0.0.2", false, nil)
	secure := startUpstream(t, "127.0.0.3", true, nil)
	pol := compile(t, fmt.Sprintf(`version: 1
network_policies:
  test:
    endpoints:
      - {host: %s, port: %d}
      - {host: %s, port: %d}
    binaries:
      - path: %s
`, plain.host, plain.port, secure.host, secure.port, self(t)))
	_, purl, ev := startProxy(t, Config{Policy: pol})

	code, body := get(t, client(purl, nil), plain.srv.URL+"/x")
	if code != 200 || !strings.Contains(body, "hello from") {
		t.Fatalf("plain: %d %q", code, body)
	}
	e := ev.last(t)
	if e.Action != "allow" || e.Method != "GET" || e.Binary != self(t) || e.Rule != "test" || e.Addr != fmt.Sprintf("%s:%d", plain.host, plain.port) {
		t.Fatalf("plain event: %+v", e)
	}
	code, body = get(t, client(purl, secure.srv), secure.srv.URL+"/y")
	if code != 200 || !strings.Contains(body, "hello from") {
		t.Fatalf("https: %d %q", code, body)
	}
	if e := ev.last(t); e.Action != "allow" || e.Method != "CONNECT" || e.PID != os.Getpid() {
		t.Fatalf("connect event: %+v", e)
	}
}

func TestDeniedNeverConnects(t *testing.T) {
	plain := startUpstream(t, "127.0.0.2", false, nil)
	secure := startUpstream(t, "127.0.0.3", true, nil)
	_, purl, ev := startProxy(t, Config{Policy: policy.MustCompile(policy.Default())})
	code, body := get(t, client(purl, nil), plain.srv.URL)
	if code != http.StatusForbidden || !strings.Contains(body, "refused for binary "+self(t)) ||
		!strings.Contains(body, fmt.Sprintf("%s:%d", plain.host, plain.port)) || !strings.Contains(body, "openshell policy set") {
		t.Fatalf("want 403 naming host, port, binary and the fix; got %d %q", code, body)
	}
	if e := ev.last(t); e.Action != "deny" || e.Status != 403 {
		t.Fatalf("event: %+v", e)
	}
	if _, err := client(purl, secure.srv).Get(secure.srv.URL); err == nil || !strings.Contains(err.Error(), "Forbidden") {
		t.Fatalf("CONNECT not refused: %v", err)
	}
	if n := plain.conns.Load() + secure.conns.Load(); n != 0 {
		t.Fatalf("denied requests reached the servers: %d connections", n)
	}
}

// curlPath is curl's real path, as /proc/PID/exe shows it.
func curlPath(t *testing.T) string {
	p, err := filepath.EvalSymlinks(testenv.RequireCommand(t, "curl", "apt-get install curl"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestWrongBinaryRefused(t *testing.T) {
	plain := startUpstream(t, "127.0.0.2", false, nil)
	curl := curlPath(t)
	pol := compile(t, fmt.Sprintf(`version: 1
network_policies:
  curl_only:
    endpoints: [{host: %s, port: %d}]
    binaries: [{path: %s}]
`, plain.host, plain.port, curl))
	_, purl, ev := startProxy(t, Config{Policy: pol})
	// This test binary is not curl.
	code, body := get(t, client(purl, nil), plain.srv.URL)
	if code != 403 || !strings.Contains(body, "is not listed in network_policies.curl_only.binaries") {
		t.Fatalf("got %d %q", code, body)
	}
	if plain.conns.Load() != 0 {
		t.Fatal("refused request reached the server")
	}
	// A real curl child process is identified through /proc and allowed.
	out, err := exec.CommandContext(t.Context(), curl, "-sS", "--noproxy", "", "-x", purl, plain.srv.URL+"/c").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "hello from") {
		t.Fatalf("curl through proxy: %v %s", err, out)
	}
	e := ev.last(t)
	if e.Action != "allow" || e.Binary != curl || e.PID == os.Getpid() {
		t.Fatalf("curl event: %+v", e)
	}
	// The re-exec'd test binary as a child: its parent (this test) is not an ancestor
	// that counts, and it is not curl, so it is refused.
	cmd := exec.CommandContext(t.Context(), self(t), "-test.run=^TestHelperClient$")
	cmd.Env = append(os.Environ(), "EGRESS_HELPER_URL="+plain.srv.URL, "EGRESS_HELPER_PROXY="+purl)
	out, _ = cmd.CombinedOutput()
	if !strings.Contains(string(out), "status=403") {
		t.Fatalf("helper client: %s", out)
	}
	if e := ev.last(t); e.Action != "deny" || e.PID == os.Getpid() || e.PID == 0 {
		t.Fatalf("helper event: %+v", e)
	}
}

// TestHelperClient is the child half of TestWrongBinaryRefused.
func TestHelperClient(t *testing.T) {
	target := os.Getenv("EGRESS_HELPER_URL")
	if target == "" {
		t.Skip("helper process only")
	}
	resp, err := client(os.Getenv("EGRESS_HELPER_PROXY"), nil).Get(target)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	fmt.Printf("status=%d\n", resp.StatusCode)
}

func TestAuditAllowsAndLogs(t *testing.T) {
	plain := startUpstream(t, "127.0.0.2", false, nil)
	pol := compile(t, fmt.Sprintf(`version: 1
network_policies:
  watched:
    endpoints: [{host: %s, port: %d, enforcement: audit, access: read-only}]
    binaries: [{path: /usr/bin/curl}]
`, plain.host, plain.port))
	_, purl, ev := startProxy(t, Config{Policy: pol})
	code, body := get(t, client(purl, nil), plain.srv.URL)
	if code != 200 || !strings.Contains(body, "hello") {
		t.Fatalf("audit mode refused: %d %q", code, body)
	}
	e := ev.last(t)
	if e.Action != "audit" || !strings.Contains(e.Reason, "audit") || e.Binary != self(t) {
		t.Fatalf("audit event: %+v", e)
	}
}

func TestAccessPresetEnforced(t *testing.T) {
	plain := startUpstream(t, "127.0.0.2", false, nil)
	pol := compile(t, fmt.Sprintf(`version: 1
network_policies:
  ro:
    endpoints: [{host: %s, port: %d, access: read-only}]
`, plain.host, plain.port))
	_, purl, _ := startProxy(t, Config{Policy: pol})
	c := client(purl, nil)
	if code, _ := get(t, c, plain.srv.URL); code != 200 {
		t.Fatalf("GET refused: %d", code)
	}
	resp, err := c.Post(plain.srv.URL, "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Fatalf("POST to read-only endpoint: %d", resp.StatusCode)
	}
}

func TestSSRFGuard(t *testing.T) {
	plain := startUpstream(t, "127.0.0.2", false, nil)
	port := plain.port
	res := staticResolver{
		"rebind.example.com": {netip.MustParseAddr("127.0.0.2")},
		"meta.example.com":   {netip.MustParseAddr("169.254.169.254")},
		"svc.example.com":    {netip.MustParseAddr("127.0.0.2")},
		"ok.allowed.test":    {netip.MustParseAddr("127.0.0.2")},
		"v6.example.com":     {netip.MustParseAddr("::ffff:127.0.0.2")},
	}
	pol := compile(t, fmt.Sprintf(`version: 1
network_policies:
  wild:
    endpoints:
      - {host: "*.example.com", port: %[1]d}
      - {host: "*.example.com", port: 80}
  exact:
    endpoints: [{host: svc.example.com, port: %[1]d}]
  listed:
    endpoints: [{host: "*.allowed.test", port: %[1]d, allowed_ips: [127.0.0.2/32]}]
  own:
    endpoints: [{host: "*.allowed.test", port: 81, allowed_ips: [10.0.0.0/8]}]
`, port))
	_, purl, ev := startProxy(t, Config{Policy: pol, Resolver: res})
	c := client(purl, nil)
	for _, tc := range []struct {
		url  string
		code int
		why  string
	}{
		{fmt.Sprintf("http://rebind.example.com:%d/", port), 403, "SSRF guard: rebind.example.com resolves to 127.0.0.2 (internal address"},
		{"http://meta.example.com/latest/meta-data", 403, "169.254.169.254"},
		{fmt.Sprintf("http://v6.example.com:%d/", port), 403, "SSRF guard"},
		{fmt.Sprintf("http://svc.example.com:%d/", port), 200, ""},
		{fmt.Sprintf("http://ok.allowed.test:%d/", port), 200, ""},
		{"http://ok.allowed.test:81/", 403, "not in allowed_ips"},
		{fmt.Sprintf("http://127.0.0.2:%d/", port), 403, "no network_policies endpoint"},
	} {
		code, body := get(t, c, tc.url)
		if code != tc.code || (tc.why != "" && !strings.Contains(body, tc.why)) {
			t.Errorf("%s: got %d %q, want %d %q", tc.url, code, body, tc.code, tc.why)
		}
	}
	if n := plain.conns.Load(); n != 2 {
		t.Fatalf("server saw %d connections, want exactly the 2 allowed ones", n)
	}
	for _, e := range ev.all() {
		if e.Action == "deny" && e.Addr != "" {
			t.Fatalf("denied event has a dialed address: %+v", e)
		}
	}
}

func TestSetPolicyLive(t *testing.T) {
	plain := startUpstream(t, "127.0.0.2", false, nil)
	p, purl, _ := startProxy(t, Config{Policy: policy.MustCompile(policy.Default())})
	c := client(purl, nil)
	if code, _ := get(t, c, plain.srv.URL); code != 403 {
		t.Fatalf("before: %d", code)
	}
	p.SetPolicy(compile(t, fmt.Sprintf("version: 1\nnetwork_policies:\n  now:\n    endpoints: [{host: %s, port: %d}]\n", plain.host, plain.port)))
	if code, _ := get(t, c, plain.srv.URL); code != 200 {
		t.Fatalf("after SetPolicy: %d", code)
	}
	p.SetPolicy(policy.MustCompile(policy.Default()))
	if code, _ := get(t, c, plain.srv.URL); code != 403 {
		t.Fatalf("after revert: %d", code)
	}
}

func TestMalformedRequests(t *testing.T) {
	_, purl, _ := startProxy(t, Config{Policy: policy.MustCompile(policy.Default())})
	for _, raw := range []string{
		"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n",
		"CONNECT nohostport HTTP/1.1\r\n\r\n",
		"GET ftp://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
		"garbage\r\n\r\n",
	} {
		c, err := net.Dial("tcp", strings.TrimPrefix(purl, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, raw)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(c)
		c.Close()
		if !bytes.HasPrefix(b, []byte("HTTP/1.1 4")) {
			t.Errorf("%q: got %q", raw, b)
		}
	}
}

func TestOversizedHead(t *testing.T) {
	_, purl, _ := startProxy(t, Config{Policy: policy.MustCompile(policy.Default())})
	c, err := net.Dial("tcp", strings.TrimPrefix(purl, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go func() {
		io.WriteString(c, "GET http://a.example.com/ HTTP/1.1\r\n")
		line := "X-Pad: " + strings.Repeat("a", 8000) + "\r\n"
		for range 200 { // 1.6 MB of headers
			if _, err := io.WriteString(c, line); err != nil {
				return
			}
		}
	}()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, _ := io.ReadAll(c)
	if !bytes.HasPrefix(b, []byte("HTTP/1.1 431")) {
		t.Fatalf("got %q", b[:min(len(b), 200)])
	}
}

func TestChildEnv(t *testing.T) {
	env := strings.Join(ChildEnv("http://10.0.0.1:3128", "/etc/openshell/ca.pem"), "\n")
	for _, want := range []string{"HTTP_PROXY=http://10.0.0.1:3128", "https_proxy=http://10.0.0.1:3128", "ALL_PROXY=", "NO_PROXY=localhost",
		"SSL_CERT_FILE=/etc/openshell/ca.pem", "REQUESTS_CA_BUNDLE=", "CURL_CA_BUNDLE=", "NODE_EXTRA_CA_CERTS=", "GIT_SSL_CAINFO="} {
		if !strings.Contains(env, want) {
			t.Errorf("missing %s in\n%s", want, env)
		}
	}
	if strings.Contains(strings.Join(ChildEnv("http://p", ""), " "), "SSL_CERT_FILE") {
		t.Error("CA vars without a CA file")
	}
}

func TestParseProcAddr(t *testing.T) {
	a, err := parseProcAddr("0100007F:1F90")
	if err != nil || a != netip.MustParseAddrPort("127.0.0.1:8080") {
		t.Fatalf("v4: %v %v", a, err)
	}
	a, err = parseProcAddr("00000000000000000000000001000000:0050")
	if err != nil || a != netip.MustParseAddrPort("[::1]:80") {
		t.Fatalf("v6: %v %v", a, err)
	}
	a, err = parseProcAddr("0000000000000000FFFF00000200007F:0050")
	if err != nil || a != netip.MustParseAddrPort("127.0.0.2:80") {
		t.Fatalf("v4-mapped: %v %v", a, err)
	}
}

// pipeConn feeds fixed input to the proxy and sends its output over a net.Pipe.
type pipeConn struct {
	net.Conn
	in io.Reader
}

func (p *pipeConn) Read(b []byte) (int, error) { return p.in.Read(b) }

func FuzzProxyRequest(f *testing.F) {
	f.Add([]byte("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"))
	f.Add([]byte("GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n"))
	f.Add([]byte("POST http://a.example.com:8080/x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET http://b/ HTTP/1.0\r\n\r\n"))
	f.Add([]byte("GET http://[::1]:99999/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"))
	f.Add([]byte("CONNECT [fe80::1%eth0]:443 HTTP/1.1\r\n\r\n"))
	// Requests for the L7 endpoint rest.example.com.
	f.Add([]byte("GET http://rest.example.com/pub/a?x=1 HTTP/1.1\r\nHost: rest.example.com\r\n\r\n"))
	f.Add([]byte("GET http://rest.example.com/pub/../admin/x HTTP/1.1\r\n\r\nGET http://rest.example.com//admin HTTP/1.1\r\n\r\n"))
	f.Add([]byte("POST http://rest.example.com/pub/%61dmin%2Fx?q=%zz HTTP/1.1\r\nContent-Length: 0\r\n\r\n"))
	f.Add([]byte("DELETE http://rest.example.com/admin/users HTTP/1.1\r\n\r\n"))
	f.Add([]byte("CONNECT rest.example.com:80 HTTP/1.1\r\n\r\n"))
	f.Add([]byte("OPTIONS * HTTP/1.1\r\nHost: rest.example.com\r\n\r\n"))
	pol := policy.MustCompile(&policy.Policy{Version: 1, NetworkPolicies: map[string]*policy.NetworkRule{
		"all": {Endpoints: []policy.Endpoint{{Host: "*.example.com", Port: 443}, {Host: "example.com", Ports: []int{80, 443}}, {Host: "::1", Port: 80}}},
		"rest": {Endpoints: []policy.Endpoint{{Host: "rest.example.com", Port: 80, Protocol: "rest",
			Rules:     []policy.L7Rule{{Method: "*", Path: "/**"}},
			DenyRules: []policy.L7Rule{{Path: "/admin/**"}, {Method: "POST", Query: map[string]policy.QueryMatcher{"q": {Any: []string{"*drop*"}}}}}}}},
	}})
	var mu sync.Mutex
	var evs []Event
	p, err := New(Config{Policy: pol, OnEvent: func(e Event) { mu.Lock(); evs = append(evs, e); mu.Unlock() },
		Resolver: staticResolver{"example.com": {netip.MustParseAddr("192.0.2.1")}, "a.example.com": {netip.MustParseAddr("10.0.0.1")},
			"rest.example.com": {netip.MustParseAddr("192.0.2.2")}},
		Dial: func(context.Context, string, string) (net.Conn, error) {
			return nil, errors.New("fuzz: no network")
		}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		mu.Lock()
		evs = nil
		mu.Unlock()
		srv, cli := net.Pipe()
		done := make(chan []byte)
		go func() { b, _ := io.ReadAll(cli); done <- b }()
		p.ServeConn(context.Background(), &pipeConn{Conn: srv, in: bytes.NewReader(data)})
		out := <-done
		if len(out) > 0 && !bytes.HasPrefix(out, []byte("HTTP/1.1 ")) {
			t.Fatalf("response is not HTTP: %q", out)
		}
		// Whatever the request looked like, the L7 endpoint never dialed a path
		// under its deny rule, and never opened an uninspected tunnel.
		mu.Lock()
		defer mu.Unlock()
		for _, e := range evs {
			if e.Rule != "rest" || e.Addr == "" {
				continue
			}
			if e.Method == http.MethodConnect {
				t.Fatalf("tunnel opened to an L7 endpoint: %+v", e)
			}
			norm, err := policy.NormalizePath(e.Path, false)
			if err != nil || strings.HasPrefix(norm+"/", "/admin/") {
				t.Fatalf("dialed for a refused path %q (%q, %v): %+v", e.Path, norm, err, e)
			}
		}
	})
}

var _ = tls.VersionTLS13

// loopbackConn is a TCP connection dialed to a listener on 127.0.0.1 (not yet
// accepted); both are closed at cleanup.
func loopbackConn(t *testing.T) (net.Listener, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return ln, c
}

func TestDiagInodeMatchesProc(t *testing.T) {
	ln, c := loopbackConn(t)
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	local, remote := c.LocalAddr().(*net.TCPAddr).AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort()
	viaDiag, err := diagInode(local, remote)
	if err != nil {
		t.Fatalf("sock_diag: %v", err)
	}
	viaProc, err := findInode("/proc/net/tcp", local, remote)
	if err != nil || viaProc == "" {
		t.Fatalf("/proc/net/tcp: %q %v", viaProc, err)
	}
	if viaDiag != viaProc {
		t.Fatalf("sock_diag inode %s != /proc inode %s", viaDiag, viaProc)
	}
	// The proc-table path (used for another namespace) identifies the same process.
	id, err := (&ProcIdentifier{NetPID: os.Getpid()}).Identify(s)
	if err != nil || id.PID != os.Getpid() || id.Exe != self(t) {
		t.Fatalf("proc-table identify: %+v %v", id, err)
	}
}

func TestForwardKeepAlive(t *testing.T) {
	plain := startUpstream(t, "127.0.0.2", false, nil)
	pol := compile(t, fmt.Sprintf("version: 1\nnetwork_policies:\n  t:\n    endpoints: [{host: %s, port: %d}]\n", plain.host, plain.port))
	_, purl, _ := startProxy(t, Config{Policy: pol})
	c, err := net.Dial("tcp", strings.TrimPrefix(purl, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for i := range 3 {
		method := "GET"
		if i == 1 {
			method = "HEAD"
		}
		fmt.Fprintf(c, "%s %s/k%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n", method, plain.srv.URL, i, plain.host, plain.port)
		req, _ := http.NewRequest(method, plain.srv.URL, nil)
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || (method == "GET" && !strings.Contains(string(b), "hello from")) || (method == "HEAD" && len(b) != 0) {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, b)
		}
	}
}

// curlVia runs real curl through the proxy with extra environment and returns the
// HTTP status it got (curl prints it) and its output.
func curlVia(t *testing.T, curl, proxyURL, target string, env ...string) (string, string) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), curl, "-sS", "--noproxy", "", "-x", proxyURL, "-o", "/dev/stderr", "-w", "%{http_code}", target)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Run() // a refused request is a non-2xx status, not an error worth failing on here
	return stdout.String(), stderr.String()
}

// TestLoaderEnvironmentRefusesBinaryMatch: curl is allowed by path, but a curl
// started with LD_PRELOAD, LD_AUDIT or LD_LIBRARY_PATH may run the agent's code, so
// it matches no binary entry (403 naming the variable and the fix); a rule without
// binaries is not affected.
func TestLoaderEnvironmentRefusesBinaryMatch(t *testing.T) {
	plain := startUpstream(t, "127.0.0.2", false, nil)
	other := startUpstream(t, "127.0.0.3", false, nil)
	curl := curlPath(t)
	libc := "/lib/x86_64-linux-gnu/libc.so.6" // preloading libc changes nothing for curl
	if _, err := os.Stat(libc); err != nil {
		t.Skipf("no %s to preload: %v", libc, err)
	}
	pol := compile(t, fmt.Sprintf(`version: 1
network_policies:
  curl_only:
    endpoints: [{host: %s, port: %d}]
    binaries: [{path: %s}]
  anyone:
    endpoints: [{host: %s, port: %d}]
`, plain.host, plain.port, curl, other.host, other.port))
	_, purl, ev := startProxy(t, Config{Policy: pol})

	if code, out := curlVia(t, curl, purl, plain.srv.URL+"/clean"); code != "200" {
		t.Fatalf("clean curl: %s %s", code, out)
	}
	for _, tc := range []struct{ env, name string }{
		{"LD_PRELOAD=" + libc, "LD_PRELOAD"},
		{"LD_AUDIT=" + libc, "LD_AUDIT"},
		{"LD_LIBRARY_PATH=" + t.TempDir(), "LD_LIBRARY_PATH"},
	} {
		code, out := curlVia(t, curl, purl, plain.srv.URL+"/tainted", tc.env)
		if code != "403" || !strings.Contains(out, "runs with "+tc.name+" set") || !strings.Contains(out, "start the program without LD_PRELOAD") {
			t.Errorf("%s: got %s %q, want 403 naming %s and the fix", tc.name, code, out, tc.name)
		}
		if e := ev.last(t); e.Action != "deny" || e.Binary != curl || e.PID == os.Getpid() {
			t.Errorf("%s: event %+v", tc.name, e)
		}
		// The rule without binaries does not look at the binary at all.
		if code, out := curlVia(t, curl, purl, other.srv.URL+"/any", tc.env); code != "200" {
			t.Errorf("%s: rule without binaries refused: %s %s", tc.name, code, out)
		}
	}
	if n := plain.conns.Load(); n != 1 {
		t.Fatalf("curl_only's server saw %d connections, want only the clean one", n)
	}
	// An empty variable does not steer the loader.
	if code, out := curlVia(t, curl, purl, plain.srv.URL+"/empty", "LD_PRELOAD="); code != "200" {
		t.Fatalf("empty LD_PRELOAD refused: %s %s", code, out)
	}
}

// TestAncestorsOptInRealProcesses: curl started by a helper process (this test
// binary, re-executed) is admitted by an entry naming the helper only when that
// entry sets ancestors: true.
func TestAncestorsOptInRealProcesses(t *testing.T) {
	plain := startUpstream(t, "127.0.0.2", false, nil)
	curl := curlPath(t)
	run := func(ancestors bool) string {
		pol := compile(t, fmt.Sprintf(`version: 1
network_policies:
  helper:
    endpoints: [{host: %s, port: %d}]
    binaries: [{path: %s, ancestors: %v}]
`, plain.host, plain.port, self(t), ancestors))
		_, purl, ev := startProxy(t, Config{Policy: pol})
		cmd := exec.CommandContext(t.Context(), self(t), "-test.run=^TestHelperSpawnCurl$")
		cmd.Env = append(os.Environ(), "EGRESS_HELPER_CURL="+curl, "EGRESS_HELPER_URL="+plain.srv.URL, "EGRESS_HELPER_PROXY="+purl)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helper: %v\n%s", err, out)
		}
		e := ev.last(t)
		if e.Binary != curl || len(e.Ancestors) == 0 || e.Ancestors[0] != self(t) {
			t.Fatalf("identity of curl under the helper: %+v", e)
		}
		return string(out)
	}
	if out := run(false); !strings.Contains(out, "code=403") || !strings.Contains(out, "does not set ancestors: true") {
		t.Fatalf("without ancestors: %s", out)
	}
	if out := run(true); !strings.Contains(out, "code=200") {
		t.Fatalf("with ancestors: true: %s", out)
	}
}

// TestHelperSpawnCurl is the middle process of TestAncestorsOptInRealProcesses.
func TestHelperSpawnCurl(t *testing.T) {
	curl := os.Getenv("EGRESS_HELPER_CURL")
	if curl == "" {
		t.Skip("helper process only")
	}
	out, _ := exec.Command(curl, "-sS", "--noproxy", "", "-x", os.Getenv("EGRESS_HELPER_PROXY"), "-o", "/dev/stdout", "-w", "\ncode=%{http_code}\n", os.Getenv("EGRESS_HELPER_URL")).CombinedOutput()
	fmt.Printf("%s\n", out)
}

// TestSharedSocketRefused: a connection to the proxy whose socket is also held by a
// forked child (as a socket passed to an allowed process would be) is refused with a
// 403 naming the reason, before the policy is asked; once the child is gone, the
// same request on a new connection goes through.
func TestSharedSocketRefused(t *testing.T) {
	plain := startUpstream(t, "127.0.0.2", false, nil)
	pol := compile(t, fmt.Sprintf("version: 1\nnetwork_policies:\n  t:\n    endpoints: [{host: %s, port: %d}]\n    binaries: [{path: %s}]\n", plain.host, plain.port, self(t)))
	_, purl, ev := startProxy(t, Config{Policy: pol})
	sleep := testenv.RequireCommand(t, "sleep", "apt-get install coreutils")

	c, err := net.Dial("tcp", strings.TrimPrefix(purl, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	f, err := c.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	child := exec.Command(sleep, "60")
	child.ExtraFiles = []*os.File{f} // the child holds the client socket as fd 3
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	defer func() {
		child.Process.Kill() // by PID: the child this test started
		child.Wait()
	}()
	// Wait until the child really holds it (its fd table is copied at fork).
	deadline := time.Now().Add(5 * time.Second)
	for {
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/3", child.Process.Pid)); err == nil && strings.HasPrefix(l, "socket:") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the child never held the socket")
		}
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Fprintf(c, "GET %s/shared HTTP/1.1\r\nHost: %s:%d\r\n\r\n", plain.srv.URL, plain.host, plain.port)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	pids := fmt.Sprintf("%d", child.Process.Pid)
	if resp.StatusCode != 403 || !strings.Contains(string(body), "held by more than one process") || !strings.Contains(string(body), pids) {
		t.Fatalf("shared socket: %d %q, want 403 naming the reason and pid %s", resp.StatusCode, body, pids)
	}
	if e := ev.last(t); e.Action != "deny" || !strings.Contains(e.Reason, "more than one process") {
		t.Fatalf("event: %+v", e)
	}
	if n := plain.conns.Load(); n != 0 {
		t.Fatalf("the server saw %d connections", n)
	}
	child.Process.Kill()
	child.Wait()
	if code, body := get(t, client(purl, nil), plain.srv.URL+"/alone"); code != 200 {
		t.Fatalf("unshared connection refused: %d %q", code, body)
	}
}

// FuzzLoaderTaint: any environment image (the agent controls it) gives a verdict
// without panicking, and a non-empty LD_PRELOAD entry always taints.
func FuzzLoaderTaint(f *testing.F) {
	f.Add([]byte("PATH=/usr/bin\x00HOME=/root\x00"), "")
	f.Add([]byte("LD_PRELOAD=/tmp/x.so\x00"), "/tmp/evil.so")
	f.Add([]byte("LD_PRELOAD=\x00LD_LIBRARY_PATH\x00=x\x00\x00"), "a")
	f.Add([]byte("XLD_PRELOAD=1\x00LD_AUDIT=a:b"), "")
	f.Fuzz(func(t *testing.T, env []byte, preload string) {
		if len(env) > 1<<16 {
			return
		}
		LoaderTaint(env)
		if preload == "" || strings.ContainsRune(preload, 0) {
			return
		}
		tainted := append(append(slices.Clone(env), 0), "LD_PRELOAD="+preload...)
		if got := LoaderTaint(tainted); !strings.Contains(got, "LD_PRELOAD") {
			t.Fatalf("LD_PRELOAD=%q not seen in %q: %q", preload, tainted, got)
		}
	})
}

// FuzzCheckTunnelHost: whatever Host and absolute-form URL a request inside a tunnel
// carries (the agent writes both), an accepted request addresses the tunnel's host.
func FuzzCheckTunnelHost(f *testing.F) {
	f.Add("GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
	f.Add("GET https://evil.example/ HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
	f.Add("GET / HTTP/1.1\r\nHost: API.example.com.:443\r\n\r\n")
	f.Add("GET / HTTP/1.1\r\nHost: api.example.com:8443\r\n\r\n")
	f.Add("GET / HTTP/1.1\r\nHost: [api.example.com]\r\nHost: evil\r\n\r\n")
	f.Add("GET //evil.example/x HTTP/1.1\r\n\r\n")
	f.Fuzz(func(t *testing.T, head string) {
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(head)))
		if err != nil {
			return
		}
		if CheckTunnelHost(req, "api.example.com", 443) != nil {
			return
		}
		// What the proxy sends upstream: Host from req.Host, never another name.
		var b bytes.Buffer
		req.Header.Del("Host")
		req.Write(&b)
		sent, err := http.ReadRequest(bufio.NewReader(&b))
		if err != nil {
			return
		}
		h := strings.ToLower(strings.TrimSuffix(strings.TrimSuffix(sent.Host, ":443"), "."))
		if h != "api.example.com" {
			t.Fatalf("accepted a request for %q (head %q)", sent.Host, head)
		}
	})
}

// TestSocketHoldersMatchesPortableScan: the descriptor-based scan finds the same
// holders as the portable one, for a socket held by this process alone and then
// also by a child.
func TestSocketHoldersMatchesPortableScan(t *testing.T) {
	_, c := loopbackConn(t)
	ino, err := findInode("/proc/net/tcp", c.LocalAddr().(*net.TCPAddr).AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort())
	if err != nil || ino == "" {
		t.Fatalf("inode: %q %v", ino, err)
	}
	link := "socket:[" + ino + "]"
	check := func(want ...int) {
		t.Helper()
		fast, err1 := socketHolders("/proc", link)
		slow, err2 := scanHolders("/proc", link)
		slices.Sort(fast)
		slices.Sort(slow)
		slices.Sort(want)
		if err1 != nil || err2 != nil || !slices.Equal(fast, want) || !slices.Equal(slow, want) {
			t.Fatalf("holders: fast %v (%v), portable %v (%v), want %v", fast, err1, slow, err2, want)
		}
	}
	check(os.Getpid())
	f, err := c.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	child := exec.Command(testenv.RequireCommand(t, "sleep", "apt-get install coreutils"), "60")
	child.ExtraFiles = []*os.File{f}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	defer func() { child.Process.Kill(); child.Wait() }()
	for deadline := time.Now().Add(5 * time.Second); ; {
		if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/3", child.Process.Pid)); l == link {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the child never held the socket")
		}
		time.Sleep(10 * time.Millisecond)
	}
	check(os.Getpid(), child.Process.Pid)
	if _, err := socketHolders("/proc", "socket:[1]"); !errors.Is(err, ErrNoOwner) {
		t.Fatalf("no holder: %v", err)
	}
}

func BenchmarkSocketHolders(b *testing.B) {
	for _, tc := range []struct {
		name string
		f    func(string, string) ([]int, error)
	}{{"dirfd", socketHolders}, {"portable", scanHolders}} {
		b.Run(tc.name, func(b *testing.B) {
			for range b.N {
				tc.f("/proc", "socket:[1]")
			}
		})
	}
}
