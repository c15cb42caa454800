package egress

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/openshell/openshell/supervisor/policy"
)

// startRelay runs the runner side on a Unix socket (what a hybrid-vsock backend
// exposes on the host) and returns a guest-side Dial for it.
func startRelay(t *testing.T, pol *policy.Compiled) (*Relay, *events, func(context.Context, string, string) (net.Conn, error)) {
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
	return r, ev, RelayDialer(func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	})
}

func TestRelayAllowsAndRechecks(t *testing.T) {
	plain := startUpstream(t, "127.0.0.2", false, nil)
	allow := compile(t, fmt.Sprintf("version: 1\nnetwork_policies:\n  t:\n    endpoints: [{host: %s, port: %d}]\n    binaries: [{path: %s}]\n", plain.host, plain.port, self(t)))
	relay, rev, dial := startRelay(t, allow)
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
	if code != 502 || !strings.Contains(body, "runner refused") {
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
	_, _, dial := startRelay(t, pol)
	for _, tc := range []struct{ host, addr, want string }{
		{"evil.example.com", fmt.Sprintf("127.0.0.2:%d", plain.port), "internal address"},
		{"127.0.0.2", fmt.Sprintf("127.0.0.3:%d", plain.port), "does not match"},
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

func FuzzRelayRequest(f *testing.F) {
	f.Add([]byte("OPENSHELL-DIAL a.example.com 127.0.0.2:80\n"))
	f.Add([]byte("OPENSHELL-DIAL [::1] [::1]:443\n"))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	r := NewRelay(compile(f, "version: 1\nnetwork_policies:\n  w:\n    endpoints: [{host: '*.example.com', port: 80}]\n"))
	r.Dial = func(context.Context, string, string) (net.Conn, error) { return nil, fmt.Errorf("fuzz: no network") }
	f.Fuzz(func(t *testing.T, data []byte) {
		srv, cli := net.Pipe()
		go func() { cli.Write(data); cli.Write([]byte("\n")) }()
		done := make(chan struct{})
		go func() {
			buf := make([]byte, 512)
			n, _ := cli.Read(buf)
			if n > 0 && !strings.HasPrefix(string(buf[:n]), "ERR ") && !strings.HasPrefix(string(buf[:n]), "OK") {
				t.Errorf("answer %q", buf[:n])
			}
			cli.Close()
			close(done)
		}()
		r.ServeConn(context.Background(), srv)
		<-done
	})
}
