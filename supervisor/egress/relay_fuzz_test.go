package egress

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/openshell/openshell/supervisor/policy"
)

type fuzzResolver map[string][]netip.Addr

func (m fuzzResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := m[strings.TrimSuffix(strings.ToLower(host), ".")]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// FuzzRelayConnectDial feeds one guest stream to the relay with an upstream dialer
// that succeeds (a pipe), so a CONNECT can really open a tunnel, and checks every
// dial the relay makes against what the request may reach: a destination the policy
// allows on that port; for a named host, only an address the resolver gives for that
// name; for an IP host, only that IP; never an address of the internal list (no
// endpoint here names one exactly). The relay must not dial at all before it knows
// the policy.
func FuzzRelayConnectDial(f *testing.F) {
	for _, s := range []string{
		"CONNECT 93.184.216.10:443 HTTP/1.1\r\nX-Openshell-Host: a.example.com\r\n\r\n",
		"CONNECT 93.184.216.99:443 HTTP/1.1\r\nX-Openshell-Host: a.example.com\r\n\r\n",
		"CONNECT 10.0.0.1:443 HTTP/1.1\r\nX-Openshell-Host: mixed.example.com\r\n\r\n",
		"CONNECT 93.184.216.11:443 HTTP/1.1\r\nX-Openshell-Host: MIXED.example.com.\r\n\r\nhello",
		"CONNECT 169.254.169.254:443 HTTP/1.1\r\nX-Openshell-Host: meta.example.com\r\n\r\n",
		"CONNECT [::ffff:93.184.216.34]:80 HTTP/1.1\r\n\r\n",
		"CONNECT 93.184.216.34:80 HTTP/1.1\r\nX-Openshell-Host: 93.184.216.34\r\n\r\n",
		"CONNECT [64:ff9b::5db8:d80a]:443 HTTP/1.1\r\nX-Openshell-Host: a.example.com\r\n\r\n",
		"GET /v1/resolve?name=a.example.com HTTP/1.1\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	pol := compile(f, "version: 1\nnetwork_policies:\n  w:\n    endpoints: [{host: '*.example.com', port: 443}, {host: 93.184.216.34, port: 80}]\n")
	res := fuzzResolver{
		"a.example.com":     {netip.MustParseAddr("93.184.216.10")},
		"mixed.example.com": {netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("93.184.216.11")},
		"meta.example.com":  {netip.MustParseAddr("169.254.169.254")},
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, known := range []bool{true, false} {
			dials := relayDials(pol, res, known, data)
			if len(dials) == 0 {
				continue
			}
			if !known {
				t.Fatalf("dialed %v before the policy is known for %q", dials, data)
			}
			req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(data)))
			if err != nil {
				t.Fatalf("dialed %v for a request that does not parse: %q", dials, data)
			}
			for _, d := range dials {
				ap, err := netip.ParseAddrPort(d)
				if err != nil {
					t.Fatalf("dialed %q", d)
				}
				ip, port := ap.Addr(), int(ap.Port())
				if IsInternal(ip, nil) {
					t.Fatalf("dialed internal %s for %q", d, data)
				}
				host := req.Header.Get(HostHeader)
				if host == "" {
					host = ip.String()
				}
				if !pol.Destination(host, port).Allow {
					t.Fatalf("dialed %s for %s:%d, which the policy does not allow: %q", d, host, port, data)
				}
				if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
					if a.Unmap().WithZone("") != ip {
						t.Fatalf("dialed %s for IP host %s", d, host)
					}
					continue
				}
				ok := false
				for _, a := range res[strings.TrimSuffix(strings.ToLower(host), ".")] {
					ok = ok || a == ip
				}
				if !ok {
					t.Fatalf("dialed %s for %s, which does not resolve there: %q", d, host, strconv.Quote(string(data)))
				}
			}
		}
	})
}

// relayDials serves data as one guest stream and returns the addresses the relay
// dialed (each dial succeeds: a pipe whose far end is closed).
func relayDials(pol *policy.Compiled, res Resolver, known bool, data []byte) []string {
	quiet := slog.New(slog.DiscardHandler)
	var (
		mu    sync.Mutex
		dials []string
	)
	r := &Relay{
		Policy: func() *policy.Compiled {
			if known {
				return pol
			}
			return nil
		},
		Resolver: res,
		Logger:   quiet,
		Dial: func(_ context.Context, _, addr string) (net.Conn, error) {
			mu.Lock()
			dials = append(dials, addr)
			mu.Unlock()
			up, far := net.Pipe()
			far.Close()
			return up, nil
		},
	}
	srv, cli := net.Pipe()
	done := make(chan struct{})
	go func() { io.ReadAll(cli); close(done) }()
	r.ServeConn(context.Background(), &pipeConn{Conn: srv, in: bytes.NewReader(data)})
	<-done
	return dials
}

// The harness reaches the dial: an allowed name at its resolved address is dialed
// once, the same name claimed for another address is not.
func TestRelayDialsHarness(t *testing.T) {
	pol := compile(t, "version: 1\nnetwork_policies:\n  w:\n    endpoints: [{host: '*.example.com', port: 443}]\n")
	res := fuzzResolver{"a.example.com": {netip.MustParseAddr("93.184.216.10")}}
	got := relayDials(pol, res, true, []byte("CONNECT 93.184.216.10:443 HTTP/1.1\r\nX-Openshell-Host: a.example.com\r\n\r\n"))
	if strings.Join(got, " ") != "93.184.216.10:443" {
		t.Fatalf("dials %v", got)
	}
	if got := relayDials(pol, res, true, []byte("CONNECT 93.184.216.99:443 HTTP/1.1\r\nX-Openshell-Host: a.example.com\r\n\r\n")); len(got) != 0 {
		t.Fatalf("dials %v for a claimed address", got)
	}
}
