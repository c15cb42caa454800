package egress

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
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
//	CONNECT <ip>:<port> HTTP/1.1   → the host side makes the TLS connection to <name>
//	X-Openshell-Host: <name>          itself (verifying the server against the host's
//	X-Openshell-Originate-TLS: 1      roots), answers 200, then reads ONE plaintext
//	                                  HTTP/1.1 request, puts the real credential values
//	                                  in for the placeholders of providers bound to
//	                                  <name>, sends it and relays the response (403 as
//	                                  the response when a placeholder may not go there;
//	                                  502 before the 200 when TLS fails)
//	GET /v1/credentials            → 200 PlaceholderSet: the placeholders and bound hosts
//	                                  of the sandbox's providers, never a value
//
// All answer 503 while the host side does not know the sandbox policy (or, for the
// last two, the credentials) yet. The host side is Relay (relay_server.go); the guest
// side is RunnerDialer, RunnerOriginator, RunnerResolver and RunnerPlaceholders.
//
// X-Openshell-Host carries the name the agent asked for, so that the host side, which
// knows the policy, can match host-based endpoints again outside the VM.
//
// Originated TLS is how a VM guest's proxy sends requests inside a tunnel it
// terminated (provider hosts, tls: terminate endpoints): the guest holds only
// placeholders, and the real values are put in on the host, where the guest cannot
// read them, memory dumps of the guest included.

// HostHeader names the requested host on a relay CONNECT.
const HostHeader = "X-Openshell-Host"

// OriginateHeader on a relay CONNECT asks the host side to make the TLS connection
// and put the credential values in (value "1").
const OriginateHeader = "X-Openshell-Originate-TLS"

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
		return relayConnect(ctx, open, ap, host, false)
	}
}

// RunnerOriginator returns a Config.OriginateTLS for a guest proxy: the runner
// connects to host at addr over TLS and the returned stream carries one plaintext
// HTTP/1.1 request and its response.
func RunnerOriginator(open func(ctx context.Context) (net.Conn, error)) func(ctx context.Context, host string, addr netip.AddrPort) (net.Conn, error) {
	return func(ctx context.Context, host string, addr netip.AddrPort) (net.Conn, error) {
		return relayConnect(ctx, open, addr, host, true)
	}
}

func relayConnect(ctx context.Context, open func(ctx context.Context) (net.Conn, error), ap netip.AddrPort, host string, originate bool) (net.Conn, error) {
	if host == "" {
		host = ap.Addr().String()
	}
	if strings.ContainsAny(host, "\r\n") {
		return nil, fmt.Errorf("egress relay: host %q contains a line break", host)
	}
	c, err := open(ctx)
	if err != nil {
		return nil, fmt.Errorf("egress relay: reach the runner: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	extra := ""
	if originate {
		extra = OriginateHeader + ": 1\r\n"
	}
	if _, err := fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s: %s\r\n%s\r\n", ap, ap, HostHeader, host, extra); err != nil {
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

// PlaceholderSet is the answer to GET /v1/credentials: what a VM guest knows of its
// sandbox's providers. It never holds a value.
type PlaceholderSet struct {
	Providers []PlaceholderProvider `json:"providers"`
}

// PlaceholderProvider is one provider as a VM guest sees it.
type PlaceholderProvider struct {
	Name string `json:"name"`
	// Env maps each credential's environment variable to its placeholder.
	Env map[string]string `json:"env"`
	// Hosts are the bound hosts (the guest terminates TLS for them).
	Hosts []string `json:"hosts"`
}

// maxPlaceholderSet bounds the answer a guest reads (64 providers of 64 keys with
// long names fit easily).
const maxPlaceholderSet = 1 << 20

// RunnerPlaceholders asks the runner for the sandbox's placeholders
// (GET /v1/credentials). A 503 (not fetched from the gateway yet) is returned as an
// error wrapping ErrNotReady.
func RunnerPlaceholders(ctx context.Context, open func(ctx context.Context) (net.Conn, error)) (*PlaceholderSet, error) {
	c, err := open(ctx)
	if err != nil {
		return nil, fmt.Errorf("egress credentials: reach the runner: %w", err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	} else {
		c.SetDeadline(time.Now().Add(15 * time.Second))
	}
	if _, err := io.WriteString(c, "GET /v1/credentials HTTP/1.1\r\nHost: runner\r\nConnection: close\r\n\r\n"); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return nil, fmt.Errorf("egress credentials: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxPlaceholderSet+1))
	if err != nil {
		return nil, fmt.Errorf("egress credentials: %w", err)
	}
	if len(b) > maxPlaceholderSet {
		return nil, fmt.Errorf("egress credentials: the runner's answer is over %d bytes", maxPlaceholderSet)
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusServiceUnavailable:
		return nil, fmt.Errorf("egress credentials: %s: %w", strings.TrimSpace(string(b)), ErrNotReady)
	default:
		return nil, fmt.Errorf("egress credentials: runner answered %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return ParsePlaceholderSet(b)
}

// ErrNotReady is the runner's 503: it does not know the answer yet; retry.
var ErrNotReady = errors.New("the VM runner is not ready yet")

// ParsePlaceholderSet decodes and checks a /v1/credentials answer (what a guest
// accepts from the host side; package credentials checks each placeholder again).
func ParsePlaceholderSet(b []byte) (*PlaceholderSet, error) {
	var set PlaceholderSet
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&set); err != nil {
		return nil, fmt.Errorf("egress credentials: bad answer from the runner: %w", err)
	}
	for i, p := range set.Providers {
		if p.Name == "" || len(p.Env) == 0 || len(p.Hosts) == 0 {
			return nil, fmt.Errorf("egress credentials: providers[%d] %q: name, env and hosts are required", i, p.Name)
		}
	}
	return &set, nil
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
