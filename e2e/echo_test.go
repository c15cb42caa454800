package e2e

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

const echoPolicyTemplate = policyFilesystem + `network_policies:
  api:
    endpoints:
      - {host: %[1]s, port: %[2]d}
    binaries:
      - path: /usr/bin/curl
`

// recordingServer is an HTTPS server on all host addresses that keeps every request
// as it arrived (method, target, Host and all headers), as a server that echoes or
// logs what it gets would see it.
type recordingServer struct {
	ln   net.Listener
	srv  *http.Server
	mu   sync.Mutex
	seen []string
}

func startRecordingServer(t *testing.T, cert *tls.Certificate) *recordingServer {
	t.Helper()
	ln, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &recordingServer{ln: ln}
	s.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b strings.Builder
		fmt.Fprintf(&b, "%s %s Host=%s\n", r.Method, r.RequestURI, r.Host)
		r.Header.Write(&b)
		s.mu.Lock()
		s.seen = append(s.seen, b.String())
		s.mu.Unlock()
		// Reflect Origin the way CORS handlers do: what an echo attack counts on.
		if o := r.Header.Get("Origin"); o != "" {
			w.Header().Set("Access-Control-Allow-Origin", o)
		}
		fmt.Fprintln(w, "hello-echo")
	})}
	go s.srv.Serve(tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{*cert}}))
	t.Cleanup(func() { s.srv.Close() })
	return s
}

func (s *recordingServer) port() int { return s.ln.Addr().(*net.TCPAddr).Port }

func (s *recordingServer) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.seen...)
}

// TestCredentialEchoes drives the echo attacks through the real binaries on the
// docker driver: the agent, holding only the provider's placeholder, puts it in
// Origin, in a custom header, or sends it inside the bound host's tunnel with a
// Host naming another server. Every attempt is refused with a 403 before anything
// reaches the server, and the server only ever sees the real value once, in the
// Authorization header of the one legitimate request. In the same sandbox, a curl
// started with LD_PRELOAD, and a proxy connection shared with a forked child, are
// refused (binary identity checks, as the agent would try them).
func TestCredentialEchoes(t *testing.T) {
	if driver() == "vm" {
		t.Skip("the echo e2e runs on the container drivers (a VM's substitution happens in its runner)")
	}
	h := newHarness(t)
	ensurePolicyImage(t)

	cert, caPEM := testCA(t, gatewayHostName)
	srv := startRecordingServer(t, cert)
	dir := t.TempDir()
	polFile := writePolicy(t, dir, fmt.Sprintf(echoPolicyTemplate, gatewayHostName, srv.port()))
	const secret = "e2e-echo-secret-8c3f51aa90"
	prov := uniqueName("echo")
	// A wildcard binding is refused unless asked for, naming the flag.
	r := h.run(t.Context(), "provider", "create", "--name", prov, "--type", "generic", "--credential", "API_TOKEN="+secret, "--host", "*.openshell.internal")
	if r.code == 0 || !strings.Contains(r.stderr+r.stdout, "--allow-wildcard-hosts") {
		t.Fatalf("wildcard provider: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	h.mustRun(t, "provider", "create", "--name", prov, "--type", "generic", "--credential", "API_TOKEN="+secret, "--host", gatewayHostName)

	box := uniqueName("echo")
	h.mustRun(t, "sandbox", "create", "--name", box, "--from", policyTestImage, "--timeout", "120s",
		"--policy", polFile, "--provider", prov, "--", "bash", "-c", "while true; do sleep 1; done")
	trustTestCA(t, box, caPEM)
	target := fmt.Sprintf("https://%s:%d/", gatewayHostName, srv.port())
	// curl prints the body and headers, then the status on a line of its own.
	curl := func(t *testing.T, env, args string) (int, string) {
		t.Helper()
		r := h.run(t.Context(), "sandbox", "exec", "-n", box, "--", "bash", "-c", env+" curl -sS -i -m 15 -w '\\n%{http_code}' "+args+" "+target)
		out := strings.TrimSpace(r.stdout)
		i := strings.LastIndexByte(out, '\n')
		var code int
		if _, err := fmt.Sscan(out[i+1:], &code); err != nil {
			t.Fatalf("curl %s: exit %d stdout %q stderr %q", args, r.code, r.stdout, r.stderr)
		}
		return code, out[:max(i, 0)]
	}

	for _, tc := range []struct{ name, args, want string }{
		{"Origin", `-H "Origin: https://$API_TOKEN"`, "header Origin may not carry it"},
		{"custom header", `-H "X-Debug-Echo: $API_TOKEN"`, "header X-Debug-Echo may not carry it"},
		{"Origin beside a valid Authorization", `-H "Authorization: Bearer $API_TOKEN" -H "Origin: $API_TOKEN"`, "header Origin may not carry it"},
		{"Host of another server", fmt.Sprintf(`-H "Host: evil.example:%d" -H "Authorization: Bearer $API_TOKEN"`, srv.port()), "does not name the tunnel's host"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(srv.requests())
			code, out := curl(t, "", tc.args)
			if code != 403 || !strings.Contains(out, tc.want) {
				t.Fatalf("got %d %q, want 403 naming %q", code, out, tc.want)
			}
			if strings.Contains(out, secret) {
				t.Fatal("the agent got the secret back")
			}
			if n := len(srv.requests()) - before; n != 0 {
				t.Fatalf("the server received %d requests for a refused one", n)
			}
		})
	}

	t.Run("Authorization alone reaches the server", func(t *testing.T) {
		code, out := curl(t, "", `-H "Authorization: Bearer $API_TOKEN"`)
		if code != 200 || !strings.Contains(out, "hello-echo") || strings.Contains(out, secret) {
			t.Fatalf("got %d %q", code, out)
		}
	})
	// Binary identity, in the sandbox: a curl started with LD_PRELOAD is not "curl"
	// for the binary rule, and a socket shared with a forked child is refused before
	// the policy is asked.
	t.Run("LD_PRELOAD curl refused", func(t *testing.T) {
		before := len(srv.requests())
		// The tunnel itself is refused: curl shows the CONNECT answer's head only, the
		// reason is in the sandbox's log.
		_, out := curl(t, "LD_PRELOAD=/lib/x86_64-linux-gnu/libc.so.6", `-H "Authorization: Bearer $API_TOKEN"`)
		if !strings.HasPrefix(out, "HTTP/1.1 403 Forbidden") {
			t.Fatalf("got %q, want the CONNECT refused with a 403", out)
		}
		waitLogs(t, h, box, "it matches /usr/bin/curl, but it runs with LD_PRELOAD set")
		if n := len(srv.requests()) - before; n != 0 {
			t.Fatalf("the server received %d requests", n)
		}
	})
	t.Run("shared socket refused", func(t *testing.T) {
		script := fmt.Sprintf(`hp=${HTTPS_PROXY#http://}; hp=${hp%%/}
exec 3<>/dev/tcp/${hp%%:*}/${hp##*:}
sleep 30 <&- >&- 2>&- &
kid=$!
sleep 0.5
printf 'CONNECT %[1]s:%[2]d HTTP/1.1\r\nHost: %[1]s:%[2]d\r\n\r\n' >&3
timeout 10 cat <&3
kill $kid`, gatewayHostName, srv.port())
		before := len(srv.requests())
		r := h.run(t.Context(), "sandbox", "exec", "-n", box, "--", "bash", "-c", script)
		if !strings.HasPrefix(r.stdout, "HTTP/1.1 403") || !strings.Contains(r.stdout, "held by more than one process") {
			t.Fatalf("exit %d stdout %q stderr %q, want a 403 naming the shared socket", r.code, r.stdout, r.stderr)
		}
		if n := len(srv.requests()) - before; n != 0 {
			t.Fatalf("the server received %d requests", n)
		}
	})
	seen := strings.Join(srv.requests(), "\n")
	if strings.Count(seen, secret) != 1 || !strings.Contains(seen, "Authorization: Bearer "+secret) {
		t.Fatalf("the server saw the secret other than once in Authorization:\n%s", seen)
	}
	waitLogs(t, h, box, "header Origin may not carry it")
}
