package egress

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/openshell/openshell/supervisor/policy"
)

const (
	fuzzPlaceholder = "openshell-placeholder:api:TOKEN:0123456789abcdef0123456789abcdef"
	fuzzSecret      = "SECRET-VALUE-never-in-the-guest"
)

// stubSecrets puts fuzzSecret in for fuzzPlaceholder in Authorization of requests to
// localhost over TLS, and refuses the placeholder anywhere else (the rules of
// credentials.Store, which cannot be imported here).
type stubSecrets struct{}

func (stubSecrets) Rewrite(host string, overTLS bool, h http.Header) error {
	for name, vals := range h {
		for i, v := range vals {
			if !strings.Contains(v, fuzzPlaceholder) {
				continue
			}
			if host != "localhost" || !overTLS || http.CanonicalHeaderKey(name) != "Authorization" {
				return errors.New("placeholder refused")
			}
			vals[i] = strings.ReplaceAll(v, fuzzPlaceholder, fuzzSecret)
		}
	}
	return nil
}

func (stubSecrets) Values() []string { return []string{fuzzSecret} }

func (stubSecrets) Placeholders() []PlaceholderProvider {
	return []PlaceholderProvider{{Name: "api", Env: map[string]string{"TOKEN": fuzzPlaceholder}, Hosts: []string{"localhost"}}}
}

// originateRelay is a relay whose only upstream is an in-memory TLS server for
// localhost:443 that records the Host and Authorization it receives and answers
// "ok" without echoing anything.
func originateRelay(tb testing.TB) (*Relay, func() (hosts, auths []string)) {
	ca := newTestCA(tb)
	var mu sync.Mutex
	var hosts, auths []string
	dial := func(ctx context.Context, _, addr string) (net.Conn, error) {
		if addr != "127.0.0.1:443" {
			return nil, fmt.Errorf("no network to %s", addr)
		}
		a, b := net.Pipe()
		go func() {
			defer b.Close()
			tc := tls.Server(b, ca.ServerTLS())
			req, err := http.ReadRequest(bufio.NewReader(tc))
			if err != nil {
				return
			}
			mu.Lock()
			hosts, auths = append(hosts, req.Host), append(auths, req.Header.Get("Authorization"))
			mu.Unlock()
			if req.URL.Path == "/echo" { // a server that reflects the credential
				a := req.Header.Get("Authorization")
				body := "you sent " + a
				fmt.Fprintf(tc, "HTTP/1.1 401 Unauthorized\r\nX-Echo: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", a, len(body))
				for i := 0; i < len(body); i += 7 { // in small pieces, across value boundaries
					io.WriteString(tc, body[i:min(i+7, len(body))])
				}
				return
			}
			io.WriteString(tc, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
		}()
		return a, nil
	}
	pol := compile(tb, "version: 1\nnetwork_policies:\n  api:\n    endpoints: [{host: localhost, port: 443}]\n")
	r := &Relay{Policy: func() *policy.Compiled { return pol }, Dial: dial,
		Resolver: staticResolver{"localhost": {netip.MustParseAddr("127.0.0.1")}},
		Secrets:  func() HostSecrets { return stubSecrets{} }, UpstreamTLS: &tls.Config{RootCAs: ca.Pool()},
		Logger: slog.New(slog.DiscardHandler)}
	return r, func() ([]string, []string) {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), hosts...), append([]string(nil), auths...)
	}
}

const originateHead = "CONNECT 127.0.0.1:443 HTTP/1.1\r\nX-Openshell-Host: localhost\r\nX-Openshell-Originate-TLS: 1\r\n\r\n"

func serveStream(r *Relay, data []byte) []byte {
	srv, cli := net.Pipe()
	done := make(chan []byte)
	go func() { b, _ := io.ReadAll(cli); done <- b }()
	r.ServeConn(context.Background(), &pipeConn{Conn: srv, in: bytes.NewReader(data)})
	return <-done
}

func TestRelayOriginate(t *testing.T) {
	r, seen := originateRelay(t)
	for _, tc := range []struct {
		name, inner string
		want        int
		secretSent  bool
	}{
		{"value put in", "GET / HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer " + fuzzPlaceholder + "\r\n\r\n", 200, true},
		{"another Host", "GET / HTTP/1.1\r\nHost: evil.example\r\nAuthorization: Bearer " + fuzzPlaceholder + "\r\n\r\n", 403, false},
		{"another header", "GET / HTTP/1.1\r\nHost: localhost\r\nOrigin: " + fuzzPlaceholder + "\r\n\r\n", 403, false},
		{"malformed", "GET / HTTP/1.1\r\nHost localhost\r\n\r\n", 400, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, before := seen()
			out := serveStream(r, []byte(originateHead+tc.inner))
			br := bufio.NewReader(bytes.NewReader(out))
			resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("CONNECT answer %q (%v)", out, err)
			}
			resp, err = http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != tc.want {
				t.Fatalf("inner answer %v (%v), want %d: %q", resp, err, tc.want, out)
			}
			_, after := seen()
			sent := len(after) > len(before) && after[len(after)-1] == "Bearer "+fuzzSecret
			if sent != tc.secretSent || bytes.Contains(out, []byte(fuzzSecret)) {
				t.Fatalf("secret sent upstream %v (want %v); answer %q", sent, tc.secretSent, out)
			}
		})
	}
	t.Run("echoed value is masked", func(t *testing.T) {
		out := serveStream(r, []byte(originateHead+"GET /echo HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "+fuzzPlaceholder+"\r\n\r\n"))
		_, after := seen()
		if after[len(after)-1] != "Bearer "+fuzzSecret {
			t.Fatalf("the server saw %q", after[len(after)-1])
		}
		br := bufio.NewReader(bytes.NewReader(out))
		http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		mask := strings.Repeat("*", len(fuzzSecret))
		if err != nil || bytes.Contains(out, []byte(fuzzSecret)) || string(body) != "you sent Bearer "+mask || resp.Header.Get("X-Echo") != "Bearer "+mask {
			t.Fatalf("answer %q (%v): want the value masked, same length", out, err)
		}
	})
	t.Run("credentials answer", func(t *testing.T) {
		out := serveStream(r, []byte("GET /v1/credentials HTTP/1.1\r\nHost: runner\r\n\r\n"))
		_, body, _ := bytes.Cut(out, []byte("\r\n\r\n"))
		set, err := ParsePlaceholderSet(body)
		if err != nil || len(set.Providers) != 1 || set.Providers[0].Env["TOKEN"] != fuzzPlaceholder || bytes.Contains(out, []byte(fuzzSecret)) {
			t.Fatalf("answer %q (%v)", out, err)
		}
		none := serveStream(&Relay{Secrets: func() HostSecrets { return nil }, Logger: slog.New(slog.DiscardHandler)},
			[]byte("GET /v1/credentials HTTP/1.1\r\nHost: runner\r\n\r\n"))
		if !bytes.HasPrefix(none, []byte("HTTP/1.1 503 ")) {
			t.Fatalf("unknown credentials answered %q, want 503", none)
		}
	})
}

// FuzzRelayOriginate feeds the request a guest sends inside originated TLS (after a
// valid CONNECT head) to the relay, whose upstream is an in-memory TLS server that
// never echoes. Whatever the bytes: no panic, the guest gets HTTP answers that never
// hold the real value, and the value reaches the server only for requests whose Host
// is the tunnel's host.
func FuzzRelayOriginate(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer " + fuzzPlaceholder + "\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: LOCALHOST.:443\r\nAuthorization: Bearer " + fuzzPlaceholder + "\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nAuthorization: " + fuzzPlaceholder + "\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"GET http://evil.example/ HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer " + fuzzPlaceholder + "\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: " + fuzzPlaceholder + "\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
		"GET /echo HTTP/1.1\r\nHost: localhost\r\nAuthorization: x" + fuzzPlaceholder + fuzzPlaceholder + "\r\n\r\n",
		"\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	r, seen := originateRelay(f)
	f.Fuzz(func(t *testing.T, inner []byte) {
		hostsBefore, _ := seen()
		out := serveStream(r, append([]byte(originateHead), inner...))
		if !bytes.HasPrefix(out, []byte("HTTP/1.1 ")) {
			t.Fatalf("answer %q", out)
		}
		if bytes.Contains(out, []byte(fuzzSecret)) {
			t.Fatalf("the guest received the real value: %q", out)
		}
		hosts, auths := seen()
		for i := len(hostsBefore); i < len(hosts); i++ {
			h := strings.ToLower(strings.TrimSuffix(strings.TrimSuffix(hosts[i], ":443"), "."))
			if strings.Contains(auths[i], fuzzSecret) && h != "localhost" {
				t.Fatalf("the value went to a request for Host %q", hosts[i])
			}
		}
	})
}

// FuzzParsePlaceholderSet: what a guest accepts from GET /v1/credentials never panics
// and every accepted provider has a name, placeholders and hosts.
func FuzzParsePlaceholderSet(f *testing.F) {
	f.Add([]byte(`{"providers":[{"name":"api","env":{"TOKEN":"` + fuzzPlaceholder + `"},"hosts":["localhost"]}]}`))
	f.Add([]byte(`{"providers":[]}`))
	f.Add([]byte(`{"providers":[{"name":"","env":{},"hosts":[]}],"x":1}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		set, err := ParsePlaceholderSet(b)
		if err != nil {
			return
		}
		for _, p := range set.Providers {
			if p.Name == "" || len(p.Env) == 0 || len(p.Hosts) == 0 {
				t.Fatalf("accepted %+v", p)
			}
		}
	})
}

func TestMasker(t *testing.T) {
	for _, tc := range []struct {
		name   string
		pieces []string
		want   string
	}{
		{"whole", []string{"a SECRET b"}, "a ****** b"},
		{"split", []string{"a SEC", "RET b"}, "a ****** b"},
		{"byte by byte", strings.Split("xSECRETySECRET", ""), "x******y******"},
		{"prefix at the end only", []string{"a SEC"}, "a SEC"},
		{"overlapping prefix", []string{"SESE", "CRET"}, "SE******"},
		{"two values", []string{"TOKEN2 and SECRET"}, "****** and ******"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			m := newMasker(&out, []string{"SECRET", "TOKEN2", "ab"})
			for _, p := range tc.pieces {
				m.Write([]byte(p))
			}
			m.flush()
			if out.String() != tc.want {
				t.Fatalf("got %q, want %q", out.String(), tc.want)
			}
		})
	}
	if newMasker(io.Discard, []string{"ab"}) != nil {
		t.Fatal("values under 4 bytes are masked")
	}
}
