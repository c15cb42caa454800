package runner

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	proxy "github.com/openshell/openshell/supervisor/egress"
	"github.com/openshell/openshell/supervisor/policy"
)

// The egress port speaks HTTP/1.1, one request per guest connection:
//
//	CONNECT <ip-or-host>:<port> HTTP/1.1   → 200 then raw bytes both ways (a tunnel),
//	                                          403 when the host-side policy refuses the
//	                                          destination, 503 while the sandbox policy is
//	                                          not loaded yet, 502 when the dial fails
//	GET /v1/resolve?name=<host> HTTP/1.1   → 200 {"addrs":["1.2.3.4",...]} (host DNS;
//	                                          the guest has no network of its own)
//
// The guest's supervisor enforces the sandbox's network policy in its proxy; the runner
// checks again outside the VM boundary, so a compromised guest gets no further: the
// destination must be named by the sandbox's network policy (polled from the gateway,
// see policysync.go) and must not be the host's own or internal networks (loopback,
// private, link-local, CGNAT, multicast) unless allowed.

// EgressPolicy is the host-side check on guest egress.
type EgressPolicy struct {
	// AllowPrivate lets guests reach loopback, private and link-local addresses.
	AllowPrivate bool `json:"allow_private,omitempty"`
	// AllowCIDRs are exceptions to the private-address rule (e.g. a LAN registry).
	AllowCIDRs []string `json:"allow_cidrs,omitempty"`
}

// errRefused marks a destination the host-side policy refuses.
var errRefused = errors.New("refused by the VM driver's egress policy")

var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// Check returns nil when the guest may connect to ip.
func (p EgressPolicy) Check(ip netip.Addr) error {
	ip = ip.Unmap()
	if !ip.IsValid() || ip.IsUnspecified() || ip.IsMulticast() || ip.IsInterfaceLocalMulticast() {
		return fmt.Errorf("destination %s is not a unicast address: %w", ip, errRefused)
	}
	internal := ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || cgnat.Contains(ip) ||
		(ip.Is4() && ip.As4()[0] == 0)
	if !internal || p.AllowPrivate {
		return nil
	}
	for _, c := range p.AllowCIDRs {
		if pfx, err := netip.ParsePrefix(c); err == nil && pfx.Contains(ip) {
			return nil
		}
	}
	return fmt.Errorf("destination %s is a host-internal address (loopback, private, link-local or CGNAT): %w", ip, errRefused)
}

// Validate checks the CIDRs.
func (p EgressPolicy) Validate() error {
	for i, c := range p.AllowCIDRs {
		if _, err := netip.ParsePrefix(c); err != nil {
			return fmt.Errorf("egress.allow_cidrs[%d] %q: %w", i, c, err)
		}
	}
	return nil
}

type egress struct {
	policy EgressPolicy
	// dest, when set, is the sandbox's own network policy: destinations are checked
	// against it on host and port (the calling binary is not visible outside the VM)
	// in addition to the static guard, so a compromised guest cannot reach what its
	// policy does not name.
	// It is read on every CONNECT (the runner's policySync swaps it as the gateway's
	// policy changes); nil = not known.
	dest func() *policy.Compiled
	// requireDest makes an unknown sandbox policy refuse CONNECTs (503) instead of
	// falling back to the static guard alone: fail closed until the policy is loaded.
	requireDest bool
	log         *slog.Logger
	resolver    *net.Resolver
	dial        func(ctx context.Context, network, addr string) (net.Conn, error)
	// readTimeout bounds reading the request (default 30s).
	readTimeout time.Duration
}

func serveEgress(l net.Listener, p EgressPolicy, log *slog.Logger) {
	_ = serveEgressPolicy(l, p, nil, log)
}

// serveEgressPolicy is serveEgress that also re-checks CONNECT destinations against
// the sandbox policy policyYAML (the bootstrap's PolicyYAML; empty = static guard
// only). A policy that does not parse is an error: the caller must not start the
// guest's egress without the check it asked for.
func serveEgressPolicy(l net.Listener, p EgressPolicy, policyYAML []byte, log *slog.Logger) error {
	e := newEgress(p, log)
	if len(policyYAML) > 0 {
		c, err := compileYAML(policyYAML)
		if err != nil {
			l.Close()
			return fmt.Errorf("runner: the sandbox policy for the egress re-check: %w", err)
		}
		e.dest = func() *policy.Compiled { return c }
	}
	e.serve(l)
	return nil
}

// serveEgressSynced is serveEgress re-checking CONNECT destinations against the
// sandbox policy src holds at the time of each request (the gateway's current one);
// while src knows no policy yet, CONNECTs are refused with 503.
func serveEgressSynced(l net.Listener, p EgressPolicy, src *policySync, log *slog.Logger) {
	e := newEgress(p, log)
	e.dest, e.requireDest = src.Current, true
	e.serve(l)
}

func newEgress(p EgressPolicy, log *slog.Logger) *egress {
	return &egress{policy: p, log: log, resolver: net.DefaultResolver, dial: (&net.Dialer{}).DialContext}
}

func compileYAML(b []byte) (*policy.Compiled, error) {
	pol, err := policy.Parse(b)
	if err != nil {
		return nil, err
	}
	return policy.Compile(pol)
}

// serve accepts until l is closed.
func (e *egress) serve(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go e.handle(c)
	}
}

func (e *egress) handle(c net.Conn) {
	defer c.Close()
	rt := e.readTimeout
	if rt == 0 {
		rt = 30 * time.Second
	}
	c.SetReadDeadline(time.Now().Add(rt))
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		e.log.Warn("egress: bad request from guest", "err", err)
		return
	}
	c.SetReadDeadline(time.Time{})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	switch {
	case req.Method == http.MethodConnect:
		e.connect(ctx, c, br, req.Host, req.Header.Get(hostHeader))
	case req.Method == http.MethodGet && req.URL.Path == "/v1/resolve":
		e.resolve(ctx, c, req.URL.Query().Get("name"))
	default:
		reply(c, http.StatusMethodNotAllowed, "use CONNECT host:port or GET /v1/resolve?name=")
	}
}

func reply(c net.Conn, code int, msg string) {
	fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		code, http.StatusText(code), len(msg), msg)
}

func (e *egress) lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	if ip, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return []netip.Addr{ip}, nil
	}
	return e.resolver.LookupNetIP(ctx, "ip", host)
}

// hostHeader carries the name the guest's agent asked for on a CONNECT to an address
// (the guest resolved it through /v1/resolve first).
const hostHeader = "X-Openshell-Host"

func (e *egress) connect(ctx context.Context, c net.Conn, br *bufio.Reader, target, name string) {
	host, port, err := net.SplitHostPort(target)
	if err != nil || port == "" {
		reply(c, http.StatusBadRequest, "CONNECT needs host:port")
		return
	}
	var dest *policy.Compiled
	if e.dest != nil {
		dest = e.dest()
	}
	if dest == nil && e.requireDest {
		e.log.Warn("egress: refused: the sandbox policy is not loaded yet from the gateway", "target", target, "host", name)
		reply(c, http.StatusServiceUnavailable, "policy not loaded yet: the VM runner has not fetched the sandbox policy from the gateway")
		return
	}
	var allowedIPs []netip.Prefix
	if dest != nil {
		pn, perr := strconv.Atoi(port)
		if name == "" {
			name = host
		}
		d := dest.Destination(strings.Trim(name, "[]"), pn)
		if perr == nil && d.Allow && name != host {
			// A name that is itself an address must be the address dialed.
			if a, err := netip.ParseAddr(strings.Trim(name, "[]")); err == nil {
				if b, err := netip.ParseAddr(strings.Trim(host, "[]")); err != nil || a.Unmap() != b.Unmap() {
					d.Allow, d.Reason = false, "the address does not match the requested IP host"
				}
			}
		}
		if perr != nil || !d.Allow {
			e.log.Info("egress: refused by the sandbox policy", "target", target, "host", name, "reason", d.Reason)
			reply(c, http.StatusForbidden, "refused by the sandbox policy: "+d.Reason)
			return
		}
		allowedIPs = d.AllowedIPs
	}
	ips, err := e.lookup(ctx, host)
	if err != nil || len(ips) == 0 {
		reply(c, http.StatusBadGateway, fmt.Sprintf("resolve %s: %v", host, err))
		return
	}
	var up net.Conn
	var lastErr error
	for _, ip := range ips {
		if err := e.policy.Check(ip); err != nil {
			lastErr = err
			continue
		}
		if len(allowedIPs) > 0 && !slices.ContainsFunc(allowedIPs, func(p netip.Prefix) bool { return p.Contains(ip.Unmap()) }) {
			lastErr = fmt.Errorf("destination %s is not in the policy's allowed_ips: %w", ip, errRefused)
			continue
		}
		up, err = e.dial(ctx, "tcp", net.JoinHostPort(ip.Unmap().String(), port))
		if err == nil {
			break
		}
		lastErr = err
	}
	if up == nil {
		code := http.StatusBadGateway
		if errors.Is(lastErr, errRefused) {
			code = http.StatusForbidden
		}
		e.log.Info("egress: refused", "target", target, "err", lastErr)
		reply(c, code, fmt.Sprint(lastErr))
		return
	}
	defer up.Close()
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	// Bytes the guest sent after its request line belong to the tunnel.
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		if _, err := up.Write(b); err != nil {
			return
		}
	}
	proxy.Splice(c, up)
}

func (e *egress) resolve(ctx context.Context, c net.Conn, name string) {
	if name == "" {
		reply(c, http.StatusBadRequest, "name is empty")
		return
	}
	ips, err := e.lookup(ctx, name)
	if err != nil {
		reply(c, http.StatusBadGateway, err.Error())
		return
	}
	proxy.WriteResolveAnswer(c, ips)
}
