package runner

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/openshell/openshell/guest/channel/wire"
	"github.com/openshell/openshell/internal/netguard"
	proxy "github.com/openshell/openshell/supervisor/egress"
	"github.com/openshell/openshell/supervisor/policy"
)

// chanListener is a net.Listener fed by the test.
type chanListener struct {
	c    chan net.Conn
	done chan struct{}
	once sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{c: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.c:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *chanListener) Addr() net.Addr { return &net.UnixAddr{Name: "fuzz", Net: "unix"} }

type mapResolver map[string][]netip.Addr

func (m mapResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := m[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// FuzzGuestEgressStream feeds one whole guest stream (preamble, then an HTTP/1.1
// relay request: CONNECT or GET /v1/resolve) to the runner's egress port as it is
// put together: the gate, then the relay with the runner's static guard. Whatever
// the bytes: a stream without this boot's preamble gets not a single byte back;
// otherwise every answer is HTTP, no tunnel opens (there is no network), nothing is
// answered 200 before the policy is known, and a lookup answer never hands out an
// address of the shared internal list.
func FuzzGuestEgressStream(f *testing.F) {
	secret := wire.Secret{7, 7, 7}
	pre := string(wire.AppendPreamble(nil, secret))
	for _, req := range []string{
		"CONNECT 93.184.216.34:443 HTTP/1.1\r\nX-Openshell-Host: api.example.com\r\n\r\n",
		"CONNECT 10.0.0.1:443 HTTP/1.1\r\nX-Openshell-Host: api.example.com\r\n\r\n",
		"CONNECT [64:ff9b::a00:1]:443 HTTP/1.1\r\n\r\n",
		"GET /v1/resolve?name=api.example.com HTTP/1.1\r\n\r\n",
		"GET /v1/resolve?name=nat.example.com HTTP/1.1\r\n\r\n",
		"GET /v1/resolve?name=API.example.com. HTTP/1.1\r\n\r\n",
		"POST /v1/resolve HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
	} {
		f.Add([]byte(pre + req))
		f.Add([]byte(req))
	}
	f.Add([]byte(pre[:10]))
	f.Add([]byte("OSI1" + secret.String()))

	pol, err := compileYAML([]byte("version: 1\nnetwork_policies:\n  a:\n    endpoints: [{host: '*.example.com', port: 443}, {host: 93.184.216.34, port: 443}]\n"))
	if err != nil {
		f.Fatal(err)
	}
	res := mapResolver{
		"api.example.com": {netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("93.184.216.34")},
		"nat.example.com": {netip.MustParseAddr("64:ff9b::a00:1")},
	}
	quiet := slog.New(slog.DiscardHandler)
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, known := range []bool{true, false} {
			out := serveGuestEgress(t, secret, pol, known, res, quiet, data)
			validPreamble := len(data) >= wire.PreambleLen && bytes.Equal(data[:wire.PreambleLen], []byte(pre))
			if !validPreamble {
				if len(out) != 0 {
					t.Fatalf("answered %q to a stream without the preamble: %q", out, data)
				}
				continue
			}
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
			if !known {
				t.Fatalf("200 before the policy is known for %q: %q", data, out)
			}
			i := bytes.Index(out, []byte("\r\n\r\n"))
			var ans struct{ Addrs []string }
			if err := json.Unmarshal(out[i+4:], &ans); err != nil {
				t.Fatalf("lookup answer %q: %v", out, err)
			}
			for _, s := range ans.Addrs {
				if netguard.IsInternal(netip.MustParseAddr(s)) {
					t.Fatalf("lookup handed out internal %s for %q", s, data)
				}
			}
		}
	})
}

// serveGuestEgress runs one stream through a gate and a relay with the runner's
// static guard and returns what the guest read back.
func serveGuestEgress(t *testing.T, secret wire.Secret, pol *policy.Compiled, known bool, res proxy.Resolver, log *slog.Logger, data []byte) []byte {
	box := newStatusBox(Status{})
	g := &gate{port: "egress", limit: 4, secret: secret, box: box, log: log,
		refused:      func(s *Status) { s.EgressRefused++ },
		preambleWait: 50 * time.Millisecond, linger: time.Millisecond}
	cl := newChanListener()
	gl := g.listen(cl)
	src := func() *policy.Compiled {
		if known {
			return pol
		}
		return nil
	}
	r := &proxy.Relay{
		Policy:      src,
		Guard:       func(ip netip.Addr, _ policy.Decision) error { return EgressPolicy{}.Check(ip) },
		Dial:        func(context.Context, string, string) (net.Conn, error) { return nil, errors.New("no network") },
		Resolver:    res,
		Logger:      log,
		ReadTimeout: 50 * time.Millisecond,
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- r.Serve(ctx, gl) }()
	guest, host := socketPair(t)
	cl.c <- host
	guest.SetDeadline(time.Now().Add(5 * time.Second))
	// The guest sends its bytes and half-closes, so a short stream ends at once
	// instead of waiting out the preamble and request timeouts.
	go func() { guest.Write(data); guest.CloseWrite() }()
	out, err := io.ReadAll(guest)
	guest.Close()
	cancel()
	if err := <-served; err != nil {
		t.Fatalf("relay: %v", err)
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the stream was neither answered nor closed within 5 s: %s", fmt.Sprintf("%q", data))
	}
	return out
}

// socketPair is a connected pair of Unix stream sockets, as the runner's channel
// listeners hand out.
func socketPair(t *testing.T) (*net.UnixConn, net.Conn) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0) // closed by the test; no exec in between
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	return conn(fds[0]).(*net.UnixConn), conn(fds[1])
}
