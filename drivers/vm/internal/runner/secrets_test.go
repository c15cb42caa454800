package runner

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/internal/hostcred"
	"github.com/openshell/openshell/supervisor/credentials"
	"github.com/openshell/openshell/supervisor/egress"
)

const testSecret = "sk-live-runner-only-7f3a9c1e5b"

// providersServer is a gateway answering GetSandboxProviderEnvironment as the real
// one does for a VM sandbox: the sandbox token AND the runner credential, or nothing.
type providersServer struct {
	*configServer
	key []byte
}

func (s *providersServer) GetSandboxProviderEnvironment(ctx context.Context, req *pb.GetSandboxProviderEnvironmentRequest) (*pb.GetSandboxProviderEnvironmentResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if a := md.Get("authorization"); len(a) != 1 || a[0] != "Bearer "+syncTestToken {
		return nil, status.Error(codes.Unauthenticated, "bad sandbox token")
	}
	c := md.Get(hostcred.MetadataKey)
	if len(c) != 1 || !hostcred.Verify(s.key, req.GetSandboxId(), c[0]) {
		return nil, status.Error(codes.PermissionDenied, "only the runner gets the values")
	}
	return credentials.EnvironmentResponse([]credentials.Provider{{
		Name: "api", Type: "generic", Credentials: map[string]string{"API_TOKEN": testSecret}, Hosts: []string{"localhost"},
	}})
}

// upstream is an HTTPS server on loopback with a certificate for localhost from a
// private CA (written to caFile); it records the Authorization and X-Custom headers
// and answers "ok" without echoing them.
type upstream struct {
	port   int
	caFile string
	mu     sync.Mutex
	auth   []string
	custom []string
}

func startUpstream(t *testing.T) *upstream {
	t.Helper()
	ca, err := credentials.NewCA("upstream-test")
	if err != nil {
		t.Fatal(err)
	}
	u := &upstream{caFile: filepath.Join(t.TempDir(), "ca.pem")}
	if err := os.WriteFile(u.caFile, ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.port = l.Addr().(*net.TCPAddr).Port
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.auth = append(u.auth, r.Header.Get("Authorization"))
		u.custom = append(u.custom, r.Header.Get("X-Custom"))
		u.mu.Unlock()
		io.WriteString(w, "ok")
	}), TLSConfig: ca.TLSConfig()}
	go srv.ServeTLS(l, "", "")
	t.Cleanup(func() { srv.Close() })
	return u
}

func (u *upstream) seen() (auth, custom []string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.auth...), append([]string(nil), u.custom...)
}

type fixedIdentity struct{}

func (fixedIdentity) Identify(net.Conn) (egress.Identity, error) {
	return egress.Identity{PID: 1, Exe: "/usr/bin/curl"}, nil
}

// TestVMSecretsStayOnHost runs the runner's egress wiring (startEgress) against a TLS
// gateway that gives values only with the runner credential, and a guest proxy wired
// as in a VM (RunnerDialer, RunnerResolver, RunnerOriginator, credentials.Guest).
// The guest learns placeholders only; a request with the placeholder in
// Authorization reaches the HTTPS server (trusted through the operator CA file) with
// the real value; the client's answer and every byte the guest side received never
// hold it; a placeholder in another header is refused before the server.
func TestVMSecretsStayOnHost(t *testing.T) {
	up := startUpstream(t)
	key := []byte("0123456789abcdef0123456789abcdef")

	cs := &configServer{}
	cs.resp.Store(policyResp(t, 1, fmt.Sprintf("version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - {host: localhost, port: %d}\n      - {host: 127.0.0.1, port: %[1]d}\n", up.port)))
	gw, caPEM := startConfigServer(t, &providersServer{configServer: cs, key: key})
	_, gwPort, _ := net.SplitHostPort(gw)

	run := func(t *testing.T, cred string) (open func(context.Context) (net.Conn, error), rec *recorder) {
		sock := filepath.Join(t.TempDir(), "egress.sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		spec := syncSpec(gwPort, caPEM, syncTestToken)
		spec.Egress.UpstreamCAFile, spec.Egress.RunnerCredential = up.caFile, cred
		stop, err := startEgress(t.Context(), l, spec, tcpTarget(gw), slog.Default())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
		rec = &recorder{}
		return func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "unix", sock)
			if err != nil {
				return nil, err
			}
			return &recordingConn{Conn: c, rec: rec}, nil
		}, rec
	}
	placeholders := func(t *testing.T, open func(context.Context) (net.Conn, error)) *egress.PlaceholderSet {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			set, err := egress.RunnerPlaceholders(t.Context(), open)
			if err == nil {
				return set
			}
			if !errors.Is(err, egress.ErrNotReady) || time.Now().After(deadline) {
				t.Fatalf("GET /v1/credentials: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	t.Run("wrong runner credential: no providers", func(t *testing.T) {
		open, rec := run(t, hostcred.Derive(key, "another-sandbox"))
		if set := placeholders(t, open); len(set.Providers) != 0 {
			t.Fatalf("providers without a valid runner credential: %+v", set.Providers)
		}
		rec.mustNotHold(t, testSecret)
	})

	open, rec := run(t, hostcred.Derive(key, syncTestSandbox))
	set := placeholders(t, open)
	if len(set.Providers) != 1 || set.Providers[0].Name != "api" || set.Providers[0].Hosts[0] != "localhost" {
		t.Fatalf("placeholders = %+v", set.Providers)
	}
	ph := set.Providers[0].Env["API_TOKEN"]
	if !strings.HasPrefix(ph, credentials.PlaceholderPrefix+"api:API_TOKEN:") {
		t.Fatalf("API_TOKEN = %q, want a placeholder", ph)
	}

	// The guest: its own CA, placeholders only, proxy wired as policywire does for VMs.
	gca, err := credentials.NewCA(syncTestSandbox)
	if err != nil {
		t.Fatal(err)
	}
	guest, err := credentials.NewGuest(gca, set.Providers)
	if err != nil {
		t.Fatal(err)
	}
	if env := guest.Env(); len(env) != 1 || env[0] != "API_TOKEN="+ph {
		t.Fatalf("guest env %q", env)
	}
	pol, err := compileYAML(fmt.Appendf(nil, "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - {host: localhost, port: %d}\n", up.port))
	if err != nil {
		t.Fatal(err)
	}
	prx, err := egress.New(egress.Config{Policy: pol, Credentials: guest, Identifier: fixedIdentity{},
		Dial: egress.RunnerDialer(open), Resolver: egress.RunnerResolver{Open: open}, OriginateTLS: egress.RunnerOriginator(open)})
	if err != nil {
		t.Fatal(err)
	}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go prx.Serve(t.Context(), pl)
	t.Cleanup(func() { prx.Close() })
	pu, _ := url.Parse("http://" + pl.Addr().String())
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(pu),
		TLSClientConfig: &tls.Config{RootCAs: gca.Pool()}, DisableKeepAlives: true}}
	get := func(t *testing.T, h http.Header) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", fmt.Sprintf("https://localhost:%d/v1/models", up.port), nil)
		req.Header = h
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}

	t.Run("Authorization gets the real value on the host", func(t *testing.T) {
		code, body := get(t, http.Header{"Authorization": {"Bearer " + ph}})
		if code != 200 || body != "ok" {
			t.Fatalf("answer %d %q", code, body)
		}
		auth, _ := up.seen()
		if len(auth) == 0 || auth[len(auth)-1] != "Bearer "+testSecret {
			t.Fatalf("the server saw Authorization %q, want the real value", auth)
		}
	})
	t.Run("placeholder in a header the provider does not name is refused", func(t *testing.T) {
		n, _ := up.seen()
		code, body := get(t, http.Header{"X-Custom": {ph}})
		if code != http.StatusForbidden || strings.Contains(body, testSecret) {
			t.Fatalf("answer %d %q, want 403", code, body)
		}
		if auth, custom := up.seen(); len(auth) != len(n) || strings.Contains(strings.Join(custom, ""), testSecret) {
			t.Fatalf("the server saw the refused request (custom %q)", custom)
		}
	})
	t.Run("Host naming another host inside the tunnel is refused", func(t *testing.T) {
		n, _ := up.seen()
		req, _ := http.NewRequest("GET", fmt.Sprintf("https://localhost:%d/", up.port), nil)
		req.Host = "evil.example"
		req.Header.Set("Authorization", "Bearer "+ph)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || strings.Contains(string(body), testSecret) {
			t.Fatalf("answer %d %q, want 403", resp.StatusCode, body)
		}
		if auth, _ := up.seen(); len(auth) != len(n) {
			t.Fatal("the server saw the request")
		}
	})
	t.Run("plain HTTP with the placeholder is refused in the guest", func(t *testing.T) {
		if err := guest.Rewrite("localhost", false, http.Header{"Authorization": {"Bearer " + ph}}); err == nil {
			t.Fatal("a placeholder over plain HTTP was accepted")
		}
		if err := guest.Rewrite("other.example", true, http.Header{"Authorization": {"Bearer " + ph}}); err == nil {
			t.Fatal("a placeholder for an unbound host was accepted")
		}
	})
	// A compromised guest skips its proxy and talks to the runner itself: the
	// runner's own checks must hold.
	raw := func(t *testing.T, tunnelHost, inner string) (int, string) {
		t.Helper()
		c, err := open(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		fmt.Fprintf(c, "CONNECT 127.0.0.1:%d HTTP/1.1\r\nX-Openshell-Host: %s\r\nX-Openshell-Originate-TLS: 1\r\n\r\n%s", up.port, tunnelHost, inner)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("originate CONNECT: %v %v", resp, err)
		}
		resp, err = http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct{ name, tunnel, req string }{
		{"forged Host", "localhost", "GET / HTTP/1.1\r\nHost: evil.example\r\nAuthorization: Bearer " + ph + "\r\n\r\n"},
		{"absolute URL naming another host", "localhost", "GET https://evil.example/ HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer " + ph + "\r\n\r\n"},
		{"allowed but unbound host", "127.0.0.1", fmt.Sprintf("GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n\r\n", up.port, ph)},
		{"custom header", "localhost", "GET / HTTP/1.1\r\nHost: localhost\r\nX-Custom: " + ph + "\r\n\r\n"},
		{"placeholder in Origin", "localhost", "GET / HTTP/1.1\r\nHost: localhost\r\nOrigin: " + ph + "\r\n\r\n"},
	} {
		t.Run("runner refuses a compromised guest: "+tc.name, func(t *testing.T) {
			n, _ := up.seen()
			code, body := raw(t, tc.tunnel, tc.req)
			if code != http.StatusForbidden || strings.Contains(body, testSecret) {
				t.Fatalf("answer %d %q, want 403", code, body)
			}
			if auth, _ := up.seen(); len(auth) != len(n) {
				t.Fatal("the server saw the request")
			}
		})
	}
	t.Run("runner puts the value in for its own bound host", func(t *testing.T) {
		code, body := raw(t, "localhost", "GET / HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "+ph+"\r\n\r\n")
		if auth, _ := up.seen(); code != 200 || body != "ok" || auth[len(auth)-1] != "Bearer "+testSecret {
			t.Fatalf("answer %d %q, server saw %q", code, body, auth)
		}
	})
	// Every byte the guest side sent or received over the egress port.
	rec.mustNotHold(t, testSecret)
	if !rec.holds(ph) {
		t.Fatal("the recorder never saw the placeholder: it does not record what the guest sends")
	}
}

// recorder keeps every byte read or written on the guest's egress streams.
type recorder struct {
	mu  sync.Mutex
	buf []byte
}

func (r *recorder) add(p []byte) {
	r.mu.Lock()
	r.buf = append(r.buf, p...)
	r.mu.Unlock()
}

func (r *recorder) holds(s string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Contains(string(r.buf), s)
}

func (r *recorder) mustNotHold(t *testing.T, secret string) {
	t.Helper()
	for _, form := range []string{secret, base64.StdEncoding.EncodeToString([]byte(secret))} {
		if r.holds(form) {
			t.Fatalf("the guest's egress streams carried %q", form)
		}
	}
}

type recordingConn struct {
	net.Conn
	rec *recorder
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.rec.add(p[:n])
	return n, err
}

func (c *recordingConn) Write(p []byte) (int, error) {
	c.rec.add(p)
	return c.Conn.Write(p)
}
