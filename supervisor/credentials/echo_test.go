package credentials

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// tunnel opens a CONNECT tunnel to target through the proxy and a TLS session inside
// it that trusts the sandbox CA, as an agent's HTTPS client would.
func (s *setup) tunnel(t *testing.T, target string) *tls.Conn {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(s.proxyURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT %s: %v %v", target, resp, err)
	}
	host, _, _ := net.SplitHostPort(target)
	tc := tls.Client(c, &tls.Config{ServerName: host, RootCAs: s.store.CA().Pool()})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS inside the tunnel: %v", err)
	}
	return tc
}

// raw sends one request head inside a tunnel and returns the status and body.
func raw(t *testing.T, tc *tls.Conn, head string) (int, string) {
	t.Helper()
	if _, err := io.WriteString(tc, head); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		t.Fatalf("response to %q: %v", head, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestEchoesNeverSeeTheSecret attacks the real proxy with the real HTTPS servers as an
// agent that wants the secret reflected back: the placeholder in a header the server
// echoes (Origin, a custom header), or a request inside the bound host's tunnel whose
// Host (or absolute-form URL) names another server. Each is refused with a 403 naming
// the reason, and neither server ever receives the real value.
func TestEchoesNeverSeeTheSecret(t *testing.T) {
	s := start(t)
	tok := s.placeholder(t, "GITHUB_TOKEN")
	bound, _ := url.Parse(s.boundURL)
	other, _ := url.Parse(s.otherURL)
	c := s.client()

	for _, tc := range []struct {
		name string
		hdr  map[string]string
		want string
	}{
		{"Origin", map[string]string{"Origin": tok}, "header Origin may not carry it"},
		{"custom header", map[string]string{"X-Echo-Me": "v=" + tok}, "header X-Echo-Me may not carry it"},
		{"Origin next to a valid Authorization", map[string]string{"Authorization": "Bearer " + tok, "Origin": "https://" + tok}, "header Origin may not carry it"},
		{"Cookie", map[string]string{"Cookie": "session=" + tok}, "header Cookie may not carry it"},
	} {
		code, body := do(t, c, s.boundURL, tc.hdr)
		if code != 403 || !strings.Contains(body, tc.want) || !strings.Contains(body, "--header") {
			t.Errorf("%s: got %d %q, want 403 naming %q and the fix", tc.name, code, body, tc.want)
		}
	}

	// Inside a tunnel to the bound host, the request names another host.
	for _, tc := range []struct {
		name, head, want string
	}{
		{"Host of another server", fmt.Sprintf("GET / HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n\r\n", other.Host, tok), "Host header"},
		{"Host without port", fmt.Sprintf("GET / HTTP/1.1\r\nHost: other.example.com\r\nAuthorization: Bearer %s\r\n\r\n", tok), "Host header"},
		{"Host of the bound name on another port", fmt.Sprintf("GET / HTTP/1.1\r\nHost: api.example.com:%s\r\nAuthorization: Bearer %s\r\n\r\n", other.Port(), tok), "Host header"},
		{"Host with a zone", fmt.Sprintf("GET / HTTP/1.1\r\nHost: [api.example.com%%25x]:%s\r\nAuthorization: Bearer %s\r\n\r\n", bound.Port(), tok), "Host header"},
		{"absolute-form URL", fmt.Sprintf("GET https://%s/ HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n\r\n", other.Host, bound.Host, tok), "request URL names host"},
	} {
		code, body := raw(t, s.tunnel(t, bound.Host), tc.head)
		if code != 403 || !strings.Contains(body, tc.want) || !strings.Contains(body, "tunnel") {
			t.Errorf("%s: got %d %q, want 403 naming %q", tc.name, code, body, tc.want)
		}
	}
	if n := len(s.bound.got()) + len(s.other.got()); n != 0 {
		t.Fatalf("refused requests reached the servers (%d):\n%s\n%s", n, s.bound.seen(), s.other.seen())
	}

	// Controls: the same tunnel with its own host (any case, trailing dot, or no Host
	// at all, which the proxy fills in) delivers the secret, in Authorization only.
	for _, head := range []string{
		fmt.Sprintf("GET /a HTTP/1.1\r\nHost: API.Example.COM.:%s\r\nAuthorization: Bearer %s\r\n\r\n", bound.Port(), tok),
		fmt.Sprintf("GET /b HTTP/1.1\r\nAuthorization: Bearer %s\r\n\r\n", tok),
	} {
		if code, body := raw(t, s.tunnel(t, bound.Host), head); code != 200 || body != "ok" {
			t.Fatalf("own host refused: %d %q", code, body)
		}
	}
	seen := s.bound.seen()
	if strings.Count(seen, secretValue) != 2 || strings.Count(seen, "Authorization: Bearer "+secretValue) != 2 {
		t.Fatalf("bound server saw the secret outside Authorization, or not twice:\n%s", seen)
	}
	if !strings.Contains(seen, "GET /b Host="+bound.Host+"\n") {
		t.Fatalf("empty Host was not set to the tunnel's: %s", seen)
	}
	if strings.Contains(s.other.seen(), secretValue) {
		t.Fatal("the other server saw the secret")
	}
	evs := strings.Join(s.events(), "\n")
	if strings.Contains(evs, secretValue) || !strings.Contains(evs, "header Origin may not carry it") || !strings.Contains(evs, "does not name the tunnel's host") {
		t.Fatalf("events do not name the refusals (or hold the secret):\n%s", evs)
	}
}

// TestWildcardBindingNeedsOptIn: "*.example.com" binds only with AllowWildcardHosts,
// and the error names the field and both fixes.
func TestWildcardBindingNeedsOptIn(t *testing.T) {
	ca, _ := NewCA("w")
	p := Provider{Name: "w", Credentials: map[string]string{"K": "v"}, Hosts: []string{"api.example.com", "*.example.com"}}
	_, err := New(ca, []Provider{p})
	if err == nil || !strings.Contains(err.Error(), `hosts[1] "*.example.com" is a wildcard`) ||
		!strings.Contains(err.Error(), "list the exact hosts") || !strings.Contains(err.Error(), "--allow-wildcard-hosts") {
		t.Fatalf("wildcard without opt-in: %v", err)
	}
	p.AllowWildcardHosts = true
	st, err := New(ca, []Provider{p})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Terminate("x.example.com", 443) || st.Terminate("a.b.example.com", 443) || st.Terminate("example.com", 443) {
		t.Fatal("wildcard binding matches more or less than one label")
	}
}

// TestRewriteIsAllOrNothing: a refused request's headers are left as they were, so
// no caller can send a half-rewritten request by mistake.
func TestRewriteIsAllOrNothing(t *testing.T) {
	ca, _ := NewCA("r")
	st, err := New(ca, []Provider{{Name: "p", Credentials: map[string]string{"TOKEN": secretValue}, Hosts: []string{"api.example.com"}}})
	if err != nil {
		t.Fatal(err)
	}
	ph := strings.TrimPrefix(st.Env()[0], "TOKEN=")
	h := http.Header{"Authorization": {"Bearer " + ph}, "X-Reflect": {ph}}
	if err := st.Rewrite("api.example.com", true, h); err == nil || !strings.Contains(err.Error(), "header X-Reflect") {
		t.Fatalf("Rewrite: %v", err)
	}
	if h.Get("Authorization") != "Bearer "+ph {
		t.Fatalf("refused request's Authorization was rewritten: %q", h.Get("Authorization"))
	}
	delete(h, "X-Reflect")
	if err := st.Rewrite("api.example.com", true, h); err != nil || h.Get("Authorization") != "Bearer "+secretValue {
		t.Fatalf("Authorization alone: %v %q", err, h.Get("Authorization"))
	}
}

// TestResponseHeadersRedacted: a bound server that reflects Authorization in a
// response header hands the agent its placeholder back, not the real value, while the
// server itself received the real value.
func TestResponseHeadersRedacted(t *testing.T) {
	s := start(t)
	tok := s.placeholder(t, "GITHUB_TOKEN")
	req, _ := http.NewRequest("GET", s.boundURL, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := s.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("X-Echo-Authorization"); resp.StatusCode != 200 || got != "Bearer "+tok {
		t.Fatalf("echoed header reached the agent as %q (status %d), want the placeholder", got, resp.StatusCode)
	}
	if got := s.bound.got(); len(got) != 1 || got[0] != "Bearer "+secretValue+"|" {
		t.Fatalf("server received %q", got)
	}
}
