package egress

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"
)

// VM egress. A guest has no network interface: its proxy's upstream connections and
// DNS lookups travel over a stream to the VM's runner on the host (the egress vsock
// port), one HTTP/1.1 request per stream, the protocol the VM runner serves:
//
//	CONNECT <ip>:<port> HTTP/1.1   → 200 then raw bytes both ways; 403 when the host
//	X-Openshell-Host: <name>          side refuses the destination; 502 when the dial fails
//	GET /v1/resolve?name=<host>    → 200 {"addrs":["1.2.3.4",...]}; 403 when no endpoint
//	                                  of the sandbox policy names the host (or every
//	                                  address it has is refused); 502 when the lookup fails
//
// Both answer 503 while the host side does not know the sandbox policy yet. The host
// side is Relay (relay_server.go); the guest side is RunnerDialer and RunnerResolver.
//
// X-Openshell-Host carries the name the agent asked for, so that the host side, which
// knows the policy, can match host-based endpoints again outside the VM.

// HostHeader names the requested host on a relay CONNECT.
const HostHeader = "X-Openshell-Host"

// RunnerDialer returns a Config.Dial for a guest proxy: open(ctx) opens a fresh
// stream to the runner (a vsock connection to the host's egress port).
func RunnerDialer(open func(ctx context.Context) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if network != "tcp" && network != "tcp4" && network != "tcp6" {
			return nil, fmt.Errorf("egress relay: network %q: only tcp is relayed", network)
		}
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return nil, fmt.Errorf("egress relay: %q is not IP:port: %w", addr, err)
		}
		host, _ := ctx.Value(hostKey{}).(string)
		if host == "" {
			host = ap.Addr().String()
		}
		c, err := open(ctx)
		if err != nil {
			return nil, fmt.Errorf("egress relay: reach the runner: %w", err)
		}
		if dl, ok := ctx.Deadline(); ok {
			c.SetDeadline(dl)
		}
		if _, err := fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s: %s\r\n\r\n", ap, ap, HostHeader, host); err != nil {
			c.Close()
			return nil, fmt.Errorf("egress relay: %w", err)
		}
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("egress relay: no answer from the runner: %w", err)
		}
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			c.Close()
			return nil, fmt.Errorf("egress relay: runner refused %s (%s): %s: %s", host, ap, resp.Status, strings.TrimSpace(string(b)))
		}
		c.SetDeadline(time.Time{})
		// Tunnel bytes may already sit in br (server-first protocols).
		return &bufConn{Conn: c, r: br}, nil
	}
}

// RunnerResolver resolves names through the runner (GET /v1/resolve): the guest has
// no DNS of its own.
type RunnerResolver struct {
	Open func(ctx context.Context) (net.Conn, error)
}

var _ Resolver = RunnerResolver{}

// LookupNetIP implements Resolver.
func (r RunnerResolver) LookupNetIP(ctx context.Context, _, host string) ([]netip.Addr, error) {
	c, err := r.Open(ctx)
	if err != nil {
		return nil, fmt.Errorf("egress resolve: reach the runner: %w", err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	} else {
		c.SetDeadline(time.Now().Add(15 * time.Second))
	}
	if _, err := fmt.Fprintf(c, "GET /v1/resolve?name=%s HTTP/1.1\r\nHost: runner\r\nConnection: close\r\n\r\n", url.QueryEscape(host)); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return nil, fmt.Errorf("egress resolve %s: %w", host, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return nil, &net.DNSError{Err: strings.TrimSpace(string(b)), Name: host, IsNotFound: resp.StatusCode == http.StatusBadGateway}
	}
	var out struct {
		Addrs []string `json:"addrs"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("egress resolve %s: bad answer: %w", host, err)
	}
	var addrs []netip.Addr
	for _, s := range out.Addrs {
		if a, err := netip.ParseAddr(s); err == nil {
			addrs = append(addrs, a.Unmap())
		}
	}
	if len(addrs) == 0 {
		return nil, &net.DNSError{Err: "no addresses", Name: host, IsNotFound: true}
	}
	return addrs, nil
}

type hostKey struct{}

// dialWithHost passes the requested host name to a RunnerDialer.
func dialWithHost(ctx context.Context, host string) context.Context {
	return context.WithValue(ctx, hostKey{}, host)
}
