package egress

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/openshell/openshell/supervisor/policy"
)

// VM egress. A guest has no network interface: its proxy's upstream connections and
// DNS lookups travel over a stream to the VM's runner on the host (the egress vsock
// port), one HTTP/1.1 request per stream, the protocol the VM runner serves:
//
//	CONNECT <ip>:<port> HTTP/1.1   → 200 then raw bytes both ways; 403 when the host
//	X-Openshell-Host: <name>          side refuses the destination; 502 when the dial fails
//	GET /v1/resolve?name=<host>    → 200 {"addrs":["1.2.3.4",...]}
//
// X-Openshell-Host carries the name the agent asked for, so that a host side that
// knows the policy (Relay) can match host-based endpoints again outside the VM.

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

// Relay is a host side of that protocol which also knows the sandbox policy: it
// re-checks each CONNECT against the policy's destinations (the guest already
// checked the binary) and the internal-address guard, then dials. A VM runner can
// serve it on the egress port instead of a policy-blind relay.
type Relay struct {
	policy           atomic.Pointer[policy.Compiled]
	Dial             func(ctx context.Context, network, addr string) (net.Conn, error) // default net.Dialer
	Resolver         Resolver                                                          // default net.DefaultResolver
	InternalPrefixes []netip.Prefix
	OnEvent          func(Event)
	Logger           *slog.Logger

	wg sync.WaitGroup
}

// NewRelay creates a relay with the sandbox's current policy.
func NewRelay(p *policy.Compiled) *Relay {
	r := &Relay{}
	r.policy.Store(p)
	return r
}

// SetPolicy replaces the policy for new connections.
func (r *Relay) SetPolicy(p *policy.Compiled) {
	if p != nil {
		r.policy.Store(p)
	}
}

// Serve handles connections from ln until ctx ends or ln fails, then waits for the
// open tunnels' goroutines.
func (r *Relay) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer r.wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("egress relay: accept: %w", err)
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.ServeConn(ctx, c)
		}()
	}
}

// ServeConn handles one guest stream.
func (r *Relay) ServeConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	lr := &io.LimitedReader{R: c, N: 64 << 10}
	br := bufio.NewReader(lr)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	c.SetReadDeadline(time.Time{})
	lr.N = 1<<63 - 1
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	switch {
	case req.Method == http.MethodConnect:
		r.connect(ctx, c, br, req)
	case req.Method == http.MethodGet && req.URL.Path == "/v1/resolve":
		r.resolve(ctx, c, req.URL.Query().Get("name"))
	default:
		writeError(c, http.StatusMethodNotAllowed, "use CONNECT ip:port or GET /v1/resolve?name=")
	}
}

func (r *Relay) resolver() Resolver {
	if r.Resolver != nil {
		return r.Resolver
	}
	return net.DefaultResolver
}

func (r *Relay) resolve(ctx context.Context, c net.Conn, name string) {
	if name == "" {
		writeError(c, http.StatusBadRequest, "name is empty")
		return
	}
	addrs, err := r.resolver().LookupNetIP(ctx, "ip", name)
	if err != nil {
		writeError(c, http.StatusBadGateway, err.Error())
		return
	}
	WriteResolveAnswer(c, addrs)
}

// WriteResolveAnswer writes the 200 answer to GET /v1/resolve that RunnerResolver
// reads: {"addrs":[...]}, IPv4-mapped addresses unmapped.
func WriteResolveAnswer(w io.Writer, addrs []netip.Addr) {
	out := struct {
		Addrs []string `json:"addrs"`
	}{Addrs: []string{}}
	for _, a := range addrs {
		out.Addrs = append(out.Addrs, a.Unmap().String())
	}
	b, _ := json.Marshal(out) // a struct of strings always marshals
	fmt.Fprintf(w, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(b), b)
}

func (r *Relay) connect(ctx context.Context, c net.Conn, br *bufio.Reader, req *http.Request) {
	hostport := req.RequestURI
	hs, ps, err := net.SplitHostPort(hostport)
	port, perr := strconv.Atoi(ps)
	if err != nil || perr != nil || port < 1 || port > 65535 {
		writeError(c, http.StatusBadRequest, "CONNECT needs ip:port")
		return
	}
	ip, err := netip.ParseAddr(hs)
	if err != nil {
		writeError(c, http.StatusBadRequest, "CONNECT needs an IP address (resolve with /v1/resolve first)")
		return
	}
	ip = ip.Unmap()
	host := req.Header.Get(HostHeader)
	if host == "" {
		host = ip.String()
	}
	ap := netip.AddrPortFrom(ip, uint16(port))
	ev := Event{Time: time.Now(), Method: "RELAY", Host: host, Port: port, Addr: ap.String()}
	refuse := func(code int, reason string) {
		ev.Action, ev.Reason, ev.Status = "deny", reason, code
		if code != http.StatusForbidden {
			ev.Action = "error"
		}
		if r.OnEvent != nil {
			r.OnEvent(ev)
		}
		writeError(c, code, reason)
	}
	d := r.policy.Load().Destination(host, port)
	ev.Rule = d.Rule
	switch {
	case !d.Allow:
		refuse(http.StatusForbidden, d.Reason)
		return
	case host != ip.String() && isIPLiteral(host) && mustIP(host) != ip:
		refuse(http.StatusForbidden, "the address does not match the requested IP host")
		return
	case len(d.AllowedIPs) > 0 && !containsAddr(d.AllowedIPs, ip):
		refuse(http.StatusForbidden, "address "+ip.String()+" not in allowed_ips of "+d.Endpoint)
		return
	case len(d.AllowedIPs) == 0 && !d.Explicit && IsInternal(ip, r.InternalPrefixes):
		refuse(http.StatusForbidden, "SSRF guard: "+host+" → internal address "+ip.String())
		return
	}
	dial := r.Dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	up, err := dial(ctx, "tcp", ap.String())
	if err != nil {
		refuse(http.StatusBadGateway, "dial: "+err.Error())
		return
	}
	defer up.Close()
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	ev.Action, ev.Reason = action(d), d.Reason
	if r.OnEvent != nil {
		r.OnEvent(ev)
	}
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		if _, err := up.Write(b); err != nil {
			return
		}
		br.Discard(n)
	}
	Splice(c, up)
}

func isIPLiteral(s string) bool {
	_, err := netip.ParseAddr(strings.Trim(s, "[]"))
	return err == nil
}

func mustIP(s string) netip.Addr {
	a, _ := netip.ParseAddr(strings.Trim(s, "[]"))
	return a.Unmap()
}
