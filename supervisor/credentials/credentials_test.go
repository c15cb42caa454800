package credentials

import (
	"context"
	"crypto/tls"
	"encoding/base64"
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
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openshell/openshell/internal/testenv"
	"github.com/openshell/openshell/supervisor/egress"
	"github.com/openshell/openshell/supervisor/policy"
)

const secretValue = "ghp_REAL-s3cr3t-0123456789"

type recorder struct {
	mu    sync.Mutex
	auths []string
	dumps []string // every request as the server saw it: Host, target and all headers
	conns int
}

func (r *recorder) seen() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.dumps, "\n")
}

func (r *recorder) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.auths...)
}

func tlsServer(t *testing.T, ip string) (*httptest.Server, *recorder, int) {
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	srv := &httptest.Server{Listener: ln, Config: &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rec.mu.Lock()
			rec.auths = append(rec.auths, r.Header.Get("Authorization")+"|"+r.Header.Get("X-Api-Key"))
			var b strings.Builder
			fmt.Fprintf(&b, "%s %s Host=%s\n", r.Method, r.RequestURI, r.Host)
			r.Header.Write(&b)
			rec.dumps = append(rec.dumps, b.String())
			rec.mu.Unlock()
			// A debug echo of the credential, as some APIs return in error replies.
			if a := r.Header.Get("Authorization"); a != "" {
				w.Header().Set("X-Echo-Authorization", a)
			}
			io.WriteString(w, "ok")
		}),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				rec.mu.Lock()
				rec.conns++
				rec.mu.Unlock()
			}
		},
	}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, rec, ln.Addr().(*net.TCPAddr).Port
}

type staticResolver map[string][]netip.Addr

func (s staticResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := s[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

type setup struct {
	store        *Store
	proxyURL     string
	bound, other *recorder
	boundURL     string
	otherURL     string
	plainURL     string
	events       func() []string
	bundle       string
}

func start(t *testing.T) *setup {
	bound, brec, bport := tlsServer(t, "127.0.0.3")
	_, orec, oport := tlsServer(t, "127.0.0.4")
	plain := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "plain") }))
	t.Cleanup(plain.Close)
	plainLn, _ := net.Listen("tcp", "127.0.0.3:0")
	plain.Listener = plainLn
	plain.Start()
	pport := plainLn.Addr().(*net.TCPAddr).Port

	ca, err := NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	store, err := New(ca, []Provider{{Name: "github", Type: "github",
		Credentials: map[string]string{"GITHUB_TOKEN": secretValue, "GH_KEY": "key-" + secretValue},
		Hosts:       []string{"api.example.com"}, Headers: []string{"authorization", "X-Api-Key"}}})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Parse(fmt.Appendf(nil, `version: 1
network_policies:
  gh:
    endpoints:
      - {host: api.example.com, port: %d}
      - {host: api.example.com, port: %d}
      - {host: other.example.com, port: %d, tls: terminate}
`, bport, pport, oport))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var evs []string
	roots := bound.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	p, err := egress.New(egress.Config{
		Policy:        policy.MustCompile(pol),
		Credentials:   store,
		UpstreamRoots: roots,
		Resolver: staticResolver{
			"api.example.com":   {netip.MustParseAddr("127.0.0.3")},
			"other.example.com": {netip.MustParseAddr("127.0.0.4")},
		},
		OnEvent: func(e egress.Event) { mu.Lock(); evs = append(evs, e.String(), fmt.Sprintf("%#v", e)); mu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve(context.Background(), ln)
	t.Cleanup(func() { p.Close() })
	bundle := filepath.Join(t.TempDir(), "ca.pem")
	if err := ca.WriteBundle(bundle); err != nil {
		t.Fatal(err)
	}
	return &setup{store: store, proxyURL: "http://" + ln.Addr().String(), bound: brec, other: orec,
		boundURL: fmt.Sprintf("https://api.example.com:%d/", bport),
		otherURL: fmt.Sprintf("https://other.example.com:%d/", oport),
		plainURL: fmt.Sprintf("http://api.example.com:%d/", pport),
		events:   func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), evs...) },
		bundle:   bundle}
}

func (s *setup) placeholder(t *testing.T, key string) string {
	for _, kv := range s.store.Env() {
		if k, v, _ := strings.Cut(kv, "="); k == key {
			return v
		}
	}
	t.Fatalf("no placeholder for %s in %v", key, s.store.Env())
	return ""
}

func (s *setup) client() *http.Client {
	u, _ := url.Parse(s.proxyURL)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(u), DisableKeepAlives: true,
		TLSClientConfig: &tls.Config{RootCAs: s.store.CA().Pool()}}}
}

func do(t *testing.T, c *http.Client, u string, hdr map[string]string) (int, string) {
	req, _ := http.NewRequest("GET", u, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestPlaceholders(t *testing.T) {
	s := start(t)
	tok := s.placeholder(t, "GITHUB_TOKEN")
	key := s.placeholder(t, "GH_KEY")
	if !strings.HasPrefix(tok, "openshell-placeholder:github:GITHUB_TOKEN:") || len(tok) != len("openshell-placeholder:github:GITHUB_TOKEN:")+32 {
		t.Fatalf("placeholder shape: %q", tok)
	}
	if strings.Contains(strings.Join(s.store.Env(), "\n"), secretValue) {
		t.Fatal("the environment holds the real value")
	}
	c := s.client()

	// Bound host over HTTPS: the server receives the real values, in both headers
	// and inside Basic credentials.
	code, body := do(t, c, s.boundURL, map[string]string{"Authorization": "Bearer " + tok, "X-Api-Key": key})
	if code != 200 || body != "ok" {
		t.Fatalf("bound host: %d %q", code, body)
	}
	basic := base64.StdEncoding.EncodeToString([]byte("x-access-token:" + tok))
	if code, _ := do(t, c, s.boundURL, map[string]string{"Authorization": "Basic " + basic}); code != 200 {
		t.Fatalf("basic: %d", code)
	}
	got := s.bound.got()
	wantBasic := "Basic " + base64.StdEncoding.EncodeToString([]byte("x-access-token:"+secretValue))
	if len(got) != 2 || got[0] != "Bearer "+secretValue+"|key-"+secretValue || got[1] != wantBasic+"|" {
		t.Fatalf("bound server received %q", got)
	}

	// Another host (TLS terminated by policy): 403 naming the mismatch, nothing sent.
	code, body = do(t, c, s.otherURL, map[string]string{"Authorization": "Bearer " + tok})
	if code != 403 || !strings.Contains(body, "github/GITHUB_TOKEN refused for other.example.com") || !strings.Contains(body, "bound to api.example.com") {
		t.Fatalf("other host: %d %q", code, body)
	}
	if n := len(s.other.got()); n != 0 {
		t.Fatalf("other host received %d requests", n)
	}
	// Without a placeholder the other host is reachable (the refusal is about the credential).
	if code, _ := do(t, c, s.otherURL, nil); code != 200 {
		t.Fatalf("other host without credentials: %d", code)
	}

	// Plain HTTP to the bound host: refused, credentials only travel over TLS.
	code, body = do(t, c, s.plainURL, map[string]string{"Authorization": "Bearer " + tok})
	if code != 403 || !strings.Contains(body, "only sent over HTTPS") {
		t.Fatalf("plain http: %d %q", code, body)
	}
	// A forged placeholder is refused too.
	forged := "openshell-placeholder:github:GITHUB_TOKEN:" + strings.Repeat("0", 32)
	if code, body := do(t, c, s.boundURL, map[string]string{"Authorization": "Bearer " + forged}); code != 403 || !strings.Contains(body, "unknown placeholder") {
		t.Fatalf("forged: %d %q", code, body)
	}

	// The event log never carries the value.
	evs := strings.Join(s.events(), "\n")
	if !strings.Contains(evs, "credential placeholder github/GITHUB_TOKEN refused") {
		t.Fatalf("mismatch not in events:\n%s", evs)
	}
	if strings.Contains(evs, secretValue) || strings.Contains(evs, base64.StdEncoding.EncodeToString([]byte(secretValue))[:12]) {
		t.Fatal("the event log holds the secret")
	}
}

// TestCurlTrustsBundle runs real curl with the environment the agent gets.
func TestCurlTrustsBundle(t *testing.T) {
	curl := testenv.RequireCommand(t, "curl", "apt-get install curl")
	s := start(t)
	tok := s.placeholder(t, "GITHUB_TOKEN")
	cmd := exec.CommandContext(t.Context(), curl, "-sS", "-H", "Authorization: Bearer "+tok, s.boundURL)
	cmd.Env = append(append(os.Environ(), egress.ChildEnv(s.proxyURL, s.bundle)...), s.store.Env()...)
	out, err := cmd.CombinedOutput()
	if err != nil || string(out) != "ok" {
		t.Fatalf("curl: %v %s", err, out)
	}
	if got := s.bound.got(); len(got) != 1 || got[0] != "Bearer "+secretValue+"|" {
		t.Fatalf("server received %q", got)
	}
	if strings.Contains(strings.Join(cmd.Args, " "), secretValue) {
		t.Fatal("secret in argv")
	}
}

func TestProviderValidate(t *testing.T) {
	ca, _ := NewCA("v")
	for _, p := range []Provider{
		{Name: "bad name", Credentials: map[string]string{"K": "v"}, Hosts: []string{"a.b"}},
		{Name: "x", Hosts: []string{"a.b"}},
		{Name: "x", Credentials: map[string]string{"K": "v"}},
		{Name: "x", Credentials: map[string]string{"1K": "v"}, Hosts: []string{"a.b"}},
		{Name: "x", Credentials: map[string]string{"K": "v\r\nX: y"}, Hosts: []string{"a.b"}},
		{Name: "x", Credentials: map[string]string{"K": "v"}, Hosts: []string{"a.*.b"}},
		{Name: "x", Credentials: map[string]string{"K": "v"}, Hosts: []string{"a.*.b"}, AllowWildcardHosts: true},
		{Name: "x", Credentials: map[string]string{"K": "v"}, Hosts: []string{"*.com"}, AllowWildcardHosts: true},
		{Name: "x", Credentials: map[string]string{"K": "v"}, Hosts: []string{"a.b"}, Headers: []string{"Bad Header"}},
		{Name: "x", Credentials: map[string]string{"K": "v"}, Hosts: []string{"a.b"}, Headers: []string{"host"}},
		{Name: "x", Credentials: map[string]string{"K": "v"}, Hosts: []string{"a.b"}, Headers: []string{"Transfer-Encoding"}},
		{Name: "x", Credentials: map[string]string{"K": "v"}, Hosts: []string{"a.b"}, Headers: []string{"Proxy-Authorization"}},
	} {
		if _, err := New(ca, []Provider{p}); err == nil {
			t.Errorf("%+v accepted", p)
		}
	}
	_, err := New(ca, []Provider{
		{Name: "a", Credentials: map[string]string{"K": "1"}, Hosts: []string{"a.example"}},
		{Name: "b", Credentials: map[string]string{"K": "2"}, Hosts: []string{"b.example"}},
	})
	if err == nil || !strings.Contains(err.Error(), "K is exported by providers a and b") {
		t.Fatalf("duplicate key: %v", err)
	}
}

func TestLeafCache(t *testing.T) {
	ca, _ := NewCA("c")
	a, err := ca.Leaf("API.example.com.")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := ca.Leaf("api.example.com")
	if a != b {
		t.Fatal("leaf not cached per name")
	}
	if _, err := a.Leaf.Verify(x509Opts(ca, "api.example.com")); err != nil {
		t.Fatalf("leaf does not verify: %v", err)
	}
	ip, _ := ca.Leaf("127.0.0.9")
	if len(ip.Leaf.IPAddresses) != 1 {
		t.Fatal("IP leaf without IP SAN")
	}
}

// FuzzRewrite: arbitrary header values never panic, never put the secret into a
// request for an unbound host, and never leave a known placeholder unresolved in a
// request that was let through to the bound host.
func FuzzRewrite(f *testing.F) {
	ca, _ := NewCA("fuzz")
	store, err := New(ca, []Provider{{Name: "p", Credentials: map[string]string{"TOKEN": secretValue}, Hosts: []string{"*.bound.example"}, AllowWildcardHosts: true}})
	if err != nil {
		f.Fatal(err)
	}
	ph := strings.TrimPrefix(store.Env()[0], "TOKEN=")
	f.Add("Bearer "+ph, "api.bound.example", true)
	f.Add("Basic "+base64.StdEncoding.EncodeToString([]byte("u:"+ph)), "x.bound.example", true)
	f.Add(ph+ph, "evil.example", true)
	f.Add("openshell-placeholder:p:TOKEN:zz", "api.bound.example", false)
	f.Fuzz(func(t *testing.T, value, host string, overTLS bool) {
		v := strings.ReplaceAll(value, "PH", ph) // let the fuzzer place the real placeholder
		h := http.Header{"Authorization": {v}, "X-Other": {v}}
		err := store.Rewrite(host, overTLS, h)
		out := strings.Join(append(h["Authorization"], h["X-Other"]...), "\n")
		if err != nil {
			var me *MismatchError
			if !errors.As(err, &me) {
				t.Fatalf("error of type %T: %v", err, err)
			}
			if strings.Contains(err.Error(), secretValue) {
				t.Fatal("error message holds the secret")
			}
			return
		}
		if !hostMatches([]string{"*.bound.example"}, host) || !overTLS {
			if strings.Contains(out, secretValue) && !strings.Contains(v, secretValue) {
				t.Fatalf("secret injected for host %q (tls=%v)", host, overTLS)
			}
		}
		// X-Other is not a header of the provider: never a real value there.
		if strings.Contains(strings.Join(h["X-Other"], ""), secretValue) && !strings.Contains(v, secretValue) {
			t.Fatalf("secret injected into an unnamed header: %q", h["X-Other"])
		}
		if strings.Contains(out, ph) && !strings.HasPrefix(v, "Basic ") {
			t.Fatalf("placeholder left in an accepted request: %q", out)
		}
	})
}

// skipHead sends the CONNECT head and the TLS client's first flight in one write
// (pending), and hides the proxy's "200 Connection Established" head from the client.
type skipHead struct {
	net.Conn
	pending []byte
	skipped bool
}

func (s *skipHead) Write(p []byte) (int, error) {
	if s.pending != nil {
		s.pending = append(s.pending, p...)
		return len(p), nil
	}
	return s.Conn.Write(p)
}

func (s *skipHead) Read(p []byte) (int, error) {
	if s.pending != nil {
		b := s.pending
		s.pending = nil
		if _, err := s.Conn.Write(b); err != nil {
			return 0, err
		}
	}
	if !s.skipped {
		var head []byte
		one := make([]byte, 1)
		for !strings.HasSuffix(string(head), "\r\n\r\n") {
			if _, err := s.Conn.Read(one); err != nil {
				return 0, err
			}
			head = append(head, one[0])
		}
		if !strings.HasPrefix(string(head), "HTTP/1.1 200") {
			return 0, fmt.Errorf("CONNECT refused: %q", head)
		}
		s.skipped = true
	}
	return s.Conn.Read(p)
}

// TestPipelinedClientHello: a client that sends its ClientHello right behind the
// CONNECT head (without waiting for 200) still gets a working terminated tunnel.
func TestPipelinedClientHello(t *testing.T) {
	s := start(t)
	u, _ := url.Parse(s.boundURL)
	c, err := net.Dial("tcp", strings.TrimPrefix(s.proxyURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	head := fmt.Appendf(nil, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", u.Host, u.Host)
	tc := tls.Client(&skipHead{Conn: c, pending: head}, &tls.Config{ServerName: u.Hostname(), RootCAs: s.store.CA().Pool()})
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nConnection: close\r\n\r\n", u.Host, s.placeholder(t, "GITHUB_TOKEN"))
	b, _ := io.ReadAll(tc)
	if !strings.HasPrefix(string(b), "HTTP/1.1 200") || !strings.HasSuffix(string(b), "ok") {
		t.Fatalf("response %q", b)
	}
	if got := s.bound.got(); len(got) != 1 || got[0] != "Bearer "+secretValue+"|" {
		t.Fatalf("server received %q", got)
	}
}
