package egress

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// testCA is a minimal Credentials for tunnels the proxy terminates: a CA minting a
// leaf per SNI, no placeholders. (Package credentials, which has the real one,
// imports this package, so its tests cannot be imported here.)
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

var _ Credentials = (*testCA)(nil)

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "egress test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key}
}

func (c *testCA) Pool() *x509.CertPool { p := x509.NewCertPool(); p.AddCert(c.cert); return p }

func (c *testCA) Terminate(string, int) bool              { return false }
func (c *testCA) Rewrite(string, bool, http.Header) error { return nil }
func (c *testCA) ServerTLS() *tls.Config {
	return &tls.Config{GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: h.ServerName},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
		if ip := net.ParseIP(h.ServerName); ip != nil || h.ServerName == "" {
			if a, ok := h.Conn.LocalAddr().(*net.TCPAddr); ok && ip == nil {
				ip = a.IP
			}
			tmpl.IPAddresses = []net.IP{ip}
		} else {
			tmpl.DNSNames = []string{h.ServerName}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
		if err != nil {
			return nil, err
		}
		return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
	}}
}

// seen records the requests an upstream served, by method and raw target.
type seen struct {
	mu   sync.Mutex
	reqs []string
}

func (s *seen) handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.reqs = append(s.reqs, r.Method+" "+r.RequestURI)
		s.mu.Unlock()
		fmt.Fprintf(w, "served %s %s", r.Method, r.URL.Path)
	})
}

func (s *seen) list() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.reqs)
}

// do sends one request and returns the status and body (a transport error fails).
func do(t *testing.T, c *http.Client, method, u string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

type l7Case struct {
	method, target string
	code           int
	want           string // in the body: upstream's answer or the refusal's reason
}

// TestL7PlainHTTP: rules on a plain-HTTP endpoint, enforced on absolute-form
// requests; refused requests never reach the server.
func TestL7PlainHTTP(t *testing.T) {
	var s seen
	up := startUpstream(t, "127.0.0.2", false, s.handler())
	pol := compile(t, fmt.Sprintf(`version: 1
network_policies:
  api:
    endpoints:
      - host: %s
        port: %d
        protocol: rest
        rules:
          - allow: {method: GET, path: /repos/**}
          - allow:
              method: POST
              path: /repos/*/issues
              query:
                label: {any: [bug, "docs-*"]}
        deny_rules:
          - {method: "*", path: /repos/secret/**}
`, up.host, up.port))
	_, purl, ev := startProxy(t, Config{Policy: pol})
	c := client(purl, nil)
	base := up.srv.URL
	for _, tc := range []l7Case{
		{"GET", "/repos/a/b", 200, "served GET /repos/a/b"},
		{"GET", "/repos", 200, "served GET /repos"},
		{"POST", "/repos/a/issues?label=docs-fix", 200, "served POST /repos/a/issues"},
		{"POST", "/repos/a/issues?label=bug&label=feature", 403, "POST /repos/a/issues is not allowed by any rules entry of network_policies.api.endpoints[0]"},
		{"POST", "/repos/a/issues", 403, "is not allowed by any rules entry"},
		{"DELETE", "/repos/a/b", 403, "DELETE /repos/a/b is not allowed by any rules entry of network_policies.api.endpoints[0]"},
		{"GET", "/repos/secret/x", 403, "GET /repos/secret/x matches deny_rules[0] of network_policies.api.endpoints[0]"},
		{"GET", "/repos/%73ecret/x", 403, "GET /repos/secret/x matches deny_rules[0]"},
		{"GET", "//repos//secret/x", 403, "matches deny_rules[0]"},
		{"GET", "/repos/a/../secret/x", 403, ". or .. segment"},
		{"GET", "/repos/a%2F..%2Fsecret/x", 403, "encoded slash (%2F)"},
		{"GET", "/other", 403, "GET /other is not allowed"},
	} {
		code, body := do(t, c, tc.method, base+tc.target)
		if code != tc.code || !strings.Contains(body, tc.want) {
			t.Errorf("%s %s: got %d %q, want %d %q", tc.method, tc.target, code, body, tc.code, tc.want)
		}
		if code == 403 && (!strings.Contains(body, "refused for binary "+self(t)) || !strings.Contains(body, "or set enforcement: audit") || !strings.Contains(body, "openshell policy set")) {
			t.Errorf("%s %s: refusal does not name the binary and the fix: %q", tc.method, tc.target, body)
		}
	}
	want := []string{"GET /repos/a/b", "GET /repos", "POST /repos/a/issues?label=docs-fix"}
	if got := s.list(); !slices.Equal(got, want) {
		t.Fatalf("upstream served %q, want only the allowed %q", got, want)
	}
	// Every decision is an event; refusals carry the path (never the query) and rule.
	var denies int
	for _, e := range ev.all() {
		if e.Action == "deny" {
			denies++
			if e.Status != 403 || e.Rule != "api" || e.Path == "" || strings.Contains(e.Path, "?") || e.Addr != "" {
				t.Errorf("deny event: %+v", e)
			}
		}
	}
	if denies != 9 {
		t.Fatalf("%d deny events, want 9: %+v", denies, ev.all())
	}
	last := ev.last(t)
	if last.Path != "/other" || !strings.Contains(last.String(), `path="/other"`) || !strings.Contains(last.String(), "egress deny GET "+up.host) {
		t.Fatalf("last event %q", last.String())
	}
	// A CONNECT tunnel to a plain-HTTP rules endpoint could not be inspected.
	cu, _ := url.Parse(purl)
	tc := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(cu)}, Timeout: 10 * time.Second}
	if _, err := tc.Get(fmt.Sprintf("https://%s:%d/repos/a", up.host, up.port)); err == nil || !strings.Contains(err.Error(), "Forbidden") {
		t.Fatalf("CONNECT to a rules endpoint without tls: terminate: %v", err)
	}
	if e := ev.last(t); e.Action != "deny" || e.Method != "CONNECT" || !strings.Contains(e.Reason, "cannot be inspected") {
		t.Fatalf("CONNECT event: %+v", e)
	}
	if n := len(s.list()); n != 3 {
		t.Fatalf("upstream served %d requests after the refused CONNECT", n)
	}
}

func TestL7Audit(t *testing.T) {
	var s seen
	up := startUpstream(t, "127.0.0.2", false, s.handler())
	pol := compile(t, fmt.Sprintf(`version: 1
network_policies:
  watched:
    endpoints:
      - host: %s
        port: %d
        protocol: rest
        enforcement: audit
        rules:
          - allow: {method: GET, path: "/v1/**"}
        deny_rules:
          - {method: DELETE}
`, up.host, up.port))
	_, purl, ev := startProxy(t, Config{Policy: pol})
	c := client(purl, nil)
	if code, body := do(t, c, "DELETE", up.srv.URL+"/v1/x"); code != 200 || body != "served DELETE /v1/x" {
		t.Fatalf("audit mode refused: %d %q", code, body)
	}
	e := ev.last(t)
	if e.Action != "audit" || e.Path != "/v1/x" || e.Addr == "" ||
		!strings.Contains(e.Reason, "audit: DELETE /v1/x matches deny_rules[0] of network_policies.watched.endpoints[0]") {
		t.Fatalf("audit event: %+v", e)
	}
	if code, _ := do(t, c, "POST", up.srv.URL+"/v2"); code != 200 {
		t.Fatalf("audit mode refused POST: %d", code)
	}
	if e := ev.last(t); e.Action != "audit" || !strings.Contains(e.Reason, "POST /v2 is not allowed by any rules entry") {
		t.Fatalf("audit event: %+v", e)
	}
	if code, _ := do(t, c, "GET", up.srv.URL+"/v1/ok"); code != 200 {
		t.Fatal("allowed GET refused")
	}
	if e := ev.last(t); e.Action != "allow" {
		t.Fatalf("allowed request logged as %+v", e)
	}
	if n := len(s.list()); n != 3 {
		t.Fatalf("upstream served %d requests, want 3", n)
	}
}

// TestL7TerminatedTLS: rules on an HTTPS endpoint with tls: terminate, checked on
// every request inside one kept-alive tunnel, with the sandbox CA of the real
// credentials store and a real TLS upstream.
func TestL7TerminatedTLS(t *testing.T) {
	var s seen
	// 127.0.0.1: the test server's certificate names it, so the proxy's verified
	// upstream handshake succeeds.
	up := startUpstream(t, "127.0.0.1", true, s.handler())
	roots := x509.NewCertPool()
	roots.AddCert(up.srv.Certificate())
	ca := newTestCA(t)
	store := ca
	doc := fmt.Sprintf(`version: 1
network_policies:
  secure:
    endpoints:
      - host: %s
        port: %d
        protocol: rest
        tls: terminate
        rules:
          - allow: {method: GET, path: /public/**}
          - allow: {method: "*", path: /rw/*}
        deny_rules:
          - {method: DELETE, path: /rw/keep}
`, up.host, up.port)
	_, purl, ev := startProxy(t, Config{Policy: compile(t, doc), Credentials: store, UpstreamRoots: roots})
	pu, _ := url.Parse(purl)
	tr := &http.Transport{Proxy: http.ProxyURL(pu), TLSClientConfig: &tls.Config{}}
	tr.TLSClientConfig.GetCertificate = nil
	tr.TLSClientConfig.RootCAs = ca.Pool() // the agent trusts the sandbox CA only
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	base := up.srv.URL
	for _, tc := range []l7Case{
		{"GET", "/public/a/b", 200, "served GET /public/a/b"},
		{"GET", "/public", 200, "served GET /public"},
		{"PUT", "/rw/x", 200, "served PUT /rw/x"},
		{"DELETE", "/rw/keep", 403, "DELETE /rw/keep matches deny_rules[0] of network_policies.secure.endpoints[0]"},
		{"POST", "/public/a", 403, "POST /public/a is not allowed by any rules entry of network_policies.secure.endpoints[0]"},
		{"GET", "/rw/a/b", 403, "GET /rw/a/b is not allowed"},
		{"GET", "/public/%2e%2e/rw/keep", 403, ". or .. segment"},
	} {
		code, body := do(t, c, tc.method, base+tc.target)
		if code != tc.code || !strings.Contains(body, tc.want) {
			t.Errorf("%s %s: got %d %q, want %d %q", tc.method, tc.target, code, body, tc.code, tc.want)
		}
	}
	want := []string{"GET /public/a/b", "GET /public", "PUT /rw/x"}
	if got := s.list(); !slices.Equal(got, want) {
		t.Fatalf("upstream served %q, want only the allowed %q", got, want)
	}
	var terminated, inner int
	for _, e := range ev.all() {
		switch {
		case e.Method == "CONNECT" && strings.Contains(e.Reason, "TLS terminated by the proxy"):
			terminated++
		case e.Method != "CONNECT":
			inner++
		}
	}
	// The first three requests share one tunnel; each refusal closes its tunnel.
	if terminated < 2 || inner != 7 {
		t.Fatalf("events: %d terminated tunnels, %d request events; want >= 2 and 7: %+v", terminated, inner, ev.all())
	}

	// Without a CA the proxy cannot terminate: the tunnel is refused, not spliced.
	_, purl2, ev2 := startProxy(t, Config{Policy: compile(t, doc), UpstreamRoots: roots})
	pu2, _ := url.Parse(purl2)
	c2 := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu2), TLSClientConfig: tr.TLSClientConfig.Clone()}, Timeout: 10 * time.Second}
	if _, err := c2.Get(base + "/public/x"); err == nil || !strings.Contains(err.Error(), "Forbidden") {
		t.Fatalf("tunnel without a CA: %v", err)
	}
	if e := ev2.last(t); e.Action != "deny" || !strings.Contains(e.Reason, "no sandbox CA") {
		t.Fatalf("no-CA event: %+v", e)
	}
	if n := len(s.list()); n != 3 {
		t.Fatalf("upstream served %d requests after the refused tunnel", n)
	}
}
