package serviceproxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		host, path, domain string
		want               Route
		rest               string
		redirect, ok       bool
	}{
		{"127.0.0.1:9", "/sb/web/", "", Route{"sb", "web"}, "/", false, true},
		{"127.0.0.1:9", "/sb/web/a/b?x", "", Route{"sb", "web"}, "/a/b?x", false, true},
		{"127.0.0.1:9", "/sb/web", "", Route{"sb", "web"}, "/", true, true},
		{"127.0.0.1:9", "/my--sb/web/", "", Route{"my--sb", "web"}, "/", false, true},
		{"web--my--sb.svc.test:9", "/x", "svc.test", Route{"my--sb", "web"}, "/x", false, true},
		{"WEB--SB.svc.test.", "/", "svc.test", Route{"sb", "web"}, "/", false, true},
		{"other.test:9", "/sb/web/", "svc.test", Route{"sb", "web"}, "/", false, true},
		{"a.b--sb.svc.test", "/", "svc.test", Route{}, "", false, false},
		{"127.0.0.1", "/", "", Route{}, "", false, false},
		{"127.0.0.1", "/sb", "", Route{}, "", false, false},
		{"127.0.0.1", "/SB/web/", "", Route{}, "", false, false},
		{"127.0.0.1", "/sb/we_b/", "", Route{}, "", false, false},
		{"127.0.0.1", "/sb/-web/", "", Route{}, "", false, false},
		{"127.0.0.1", "sb/web/", "", Route{}, "", false, false},
		{"127.0.0.1", "/sb/" + strings.Repeat("a", 64) + "/", "", Route{}, "", false, false},
	} {
		rt, rest, redir, ok := Parse(tc.host, tc.path, tc.domain)
		if ok != tc.ok || rt != tc.want || rest != tc.rest || redir != tc.redirect {
			t.Errorf("Parse(%q, %q, %q) = %+v %q %v %v; want %+v %q %v %v", tc.host, tc.path, tc.domain,
				rt, rest, redir, ok, tc.want, tc.rest, tc.redirect, tc.ok)
		}
	}
}

func TestURLRoundTrip(t *testing.T) {
	rt := Route{Sandbox: "my--sb", Service: "web"}
	for _, domain := range []string{"", "svc.test"} {
		u := URL("127.0.0.1:8080", rt, domain)
		req := httptest.NewRequest(http.MethodGet, u, nil)
		got, rest, redir, ok := Parse(req.Host, req.URL.Path, domain)
		if !ok || redir || got != rt || rest != "/" {
			t.Errorf("URL %s parses to %+v %q %v %v", u, got, rest, redir, ok)
		}
	}
	if u := URL("127.0.0.1:8080", rt, "svc.test"); u != "http://web--my--sb.svc.test:8080/" {
		t.Errorf("host URL = %s", u)
	}
}

// TestHandler runs the proxy against a real HTTP server. The dialer here is a plain TCP
// dial: a stand-in for the supervisor relay, which the gateway and e2e tests exercise.
func TestHandler(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "path=%s host=%s prefix=%s", r.URL.Path, r.Host, r.Header.Get("X-Forwarded-Prefix"))
	}))
	defer backend.Close()
	var dialed []string
	dial := func(ctx context.Context, id string, port uint32) (net.Conn, error) {
		dialed = append(dialed, fmt.Sprintf("%s:%d", id, port))
		var d net.Dialer
		return d.DialContext(ctx, "tcp", backend.Listener.Addr().String())
	}
	resolve := func(_ context.Context, rt Route) (Target, error) {
		switch rt {
		case Route{"sb", "web"}:
			return Target{SandboxID: "id-1", Port: 8080}, nil
		case Route{"sb", "dup"}:
			return Target{}, fmt.Errorf("two of them: %w", ErrAmbiguous)
		}
		return Target{}, ErrNotFound
	}
	h := New("svc.test", resolve, dial, nil)
	defer h.Close()
	front := httptest.NewServer(h)
	defer front.Close()
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(host, path string) (int, string, http.Header) {
		req, _ := http.NewRequest(http.MethodGet, front.URL+path, nil)
		if host != "" {
			req.Host = host
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header
	}
	if code, body, _ := get("", "/sb/web/a/b"); code != 200 || !strings.HasPrefix(body, "path=/a/b host=127.0.0.1") || !strings.HasSuffix(body, "prefix=/sb/web") {
		t.Errorf("path route: %d %q", code, body)
	}
	if code, body, _ := get("web--sb.svc.test", "/x"); code != 200 || body != "path=/x host=web--sb.svc.test prefix=" {
		t.Errorf("host route: %d %q", code, body)
	}
	if code, _, hdr := get("", "/sb/web?q=1"); code != http.StatusPermanentRedirect || hdr.Get("Location") != "/sb/web/?q=1" {
		t.Errorf("redirect: %d %q", code, hdr.Get("Location"))
	}
	if code, body, _ := get("", "/sb/gone/"); code != 404 || !strings.Contains(body, "has no service gone") {
		t.Errorf("unknown service: %d %q", code, body)
	}
	if code, _, _ := get("", "/sb/dup/"); code != 409 {
		t.Errorf("ambiguous: %d", code)
	}
	// DNS rebinding: a foreign Host on a path route is refused before any lookup.
	if code, body, _ := get("evil.example:80", "/sb/web/"); code != http.StatusMisdirectedRequest || !strings.Contains(body, "evil.example") {
		t.Errorf("foreign host: %d %q", code, body)
	}
	if code, _, _ := get("localhost:1", "/sb/web/"); code != 200 {
		t.Errorf("localhost: %d", code)
	}
	if code, _, _ := get("[::1]:1", "/sb/web/"); code != 200 {
		t.Errorf("[::1]: %d", code)
	}
	if code, _, _ := get("", "/"); code != 404 {
		t.Errorf("root: %d", code)
	}
	if len(dialed) == 0 || dialed[0] != "id-1:8080" {
		t.Errorf("dialed %v, want id-1:8080", dialed)
	}
	// A dial failure is a 502 naming the service.
	h2 := New("", resolve, func(context.Context, string, uint32) (net.Conn, error) {
		return nil, fmt.Errorf("no supervisor session")
	}, nil)
	rec := httptest.NewRecorder()
	h2.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "http://127.0.0.1/sb/web/", nil))
	if rec.Code != http.StatusBadGateway || !strings.Contains(rec.Body.String(), "service web of sandbox sb (port 8080)") {
		t.Errorf("dial failure: %d %q", rec.Code, rec.Body.String())
	}
}

// FuzzParse: the route parser sees untrusted host headers and paths. It must not
// panic, and whatever it accepts must be two DNS labels with a service without "--"
// and a rest path that starts with '/'.
func FuzzParse(f *testing.F) {
	for _, s := range [][3]string{
		{"127.0.0.1:1", "/sb/web/x", ""}, {"web--sb.svc.test:1", "/", "svc.test"}, {"a--b--c.d", "/", "d"},
		{"[::1]:80", "/a/b", "x"}, {"", "", ""}, {"--.svc", "//", "svc"}, {"x", "/a/b", "."},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, host, path, domain string) {
		rt, rest, _, ok := Parse(host, path, domain)
		if !ok {
			return
		}
		if !isLabel(rt.Sandbox) || !isLabel(rt.Service) || strings.Contains(rt.Service, "--") {
			t.Fatalf("accepted bad names %+v from %q %q", rt, host, path)
		}
		if !strings.HasPrefix(rest, "/") {
			t.Fatalf("rest %q does not start with /", rest)
		}
	})
}
