package egress

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/openshell/openshell/supervisor/policy"
)

// Relay is the host side of the relay protocol (see relay.go), the one a VM runner
// serves on a guest's egress port. It knows the sandbox policy and re-checks every
// request outside the VM boundary, so a compromised guest gets no further than its
// policy: a CONNECT must name a destination the policy allows (host and port; the
// guest already checked the binary, which the host cannot see) at an address the
// address guard accepts and, when it names a host, at an address the host resolves
// for that name (see pins); a name lookup must be for a host some endpoint names.
//
// The zero value is usable and refuses everything with 503 until a policy is set
// (SetPolicy) or a Policy source answers.
type Relay struct {
	held atomic.Pointer[policy.Compiled]

	// Policy, when set, is asked for the sandbox policy on every request instead of
	// the one NewRelay and SetPolicy hold (a VM runner passes its copy polled from the
	// gateway). A nil answer means not known yet: requests are refused with 503.
	Policy func() *policy.Compiled
	// Guard, when set, replaces the SSRF guard (internal addresses only for endpoints
	// that name the host exactly or list allowed_ips) as the check on every address
	// the relay would dial or hand out in a lookup answer, given the policy decision
	// for it. A non-nil error refuses the address (403). A VM runner passes its
	// operator-configured static guard, which a policy cannot lift. allowed_ips of
	// the endpoint are enforced before Guard either way.
	Guard func(ip netip.Addr, d policy.Decision) error
	// Dial opens upstream connections (default net.Dialer).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Resolver answers /v1/resolve (default net.DefaultResolver).
	Resolver Resolver
	// InternalPrefixes are extra addresses the default SSRF guard treats as internal.
	InternalPrefixes []netip.Prefix
	// OnEvent receives every decision on a CONNECT and every refused or failed
	// lookup (Method "RESOLVE"); it is called on the connection's goroutine.
	OnEvent func(Event)
	// Logger receives refusals and failures (default slog.Default()).
	Logger *slog.Logger
	// ReadTimeout bounds reading a request (default 30s).
	ReadTimeout time.Duration
	// Secrets, when set, is asked for the sandbox's credential store on requests
	// with originated TLS and on GET /v1/credentials; a nil answer means not known
	// yet (503). Unset: originated requests go out as they are and the guest gets an
	// empty PlaceholderSet.
	Secrets func() HostSecrets
	// UpstreamTLS is the template for originated TLS (RootCAs: the host's roots plus
	// any operator CA; nil = system roots). ServerName is set per request.
	UpstreamTLS *tls.Config

	wg   sync.WaitGroup
	pins pins
}

// pinTTL is how long an address handed out for a name stays good for a CONNECT
// naming that host, so a guest that looked a name up may connect to the answer even
// if the host's resolver rotates its answers meanwhile.
const pinTTL = 10 * time.Minute

// maxPinned bounds the names remembered; beyond it, expired names are dropped and,
// if that is not enough, all of them (later CONNECTs then resolve again).
const maxPinned = 4096

// pins remembers, per name, the addresses the relay resolved for it. A CONNECT that
// names a host goes only to one of them: the host, not the guest, decides where a
// name leads, so a compromised guest cannot claim an allowed name for another
// address.
type pins struct {
	mu sync.Mutex
	m  map[string]map[netip.Addr]time.Time // name → address → expiry
}

func pinKey(name string) string { return strings.TrimSuffix(strings.ToLower(name), ".") }

func (p *pins) add(name string, addrs []netip.Addr, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = map[string]map[netip.Addr]time.Time{}
	}
	k := pinKey(name)
	if _, ok := p.m[k]; !ok && len(p.m) >= maxPinned {
		for n, as := range p.m {
			for a, exp := range as {
				if now.After(exp) {
					delete(as, a)
				}
			}
			if len(as) == 0 {
				delete(p.m, n)
			}
		}
		if len(p.m) >= maxPinned {
			clear(p.m)
		}
	}
	as := p.m[k]
	if as == nil {
		as = map[netip.Addr]time.Time{}
		p.m[k] = as
	}
	for _, a := range addrs {
		as[a.Unmap().WithZone("")] = now.Add(pinTTL)
	}
}

func (p *pins) has(name string, ip netip.Addr, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	exp, ok := p.m[pinKey(name)][ip]
	return ok && now.Before(exp)
}

// NewRelay creates a relay holding the sandbox's current policy.
func NewRelay(p *policy.Compiled) *Relay {
	r := &Relay{}
	r.held.Store(p)
	return r
}

// SetPolicy replaces the held policy for new requests (nil is ignored). It has no
// effect when a Policy source is set.
func (r *Relay) SetPolicy(p *policy.Compiled) {
	if p != nil {
		r.held.Store(p)
	}
}

func (r *Relay) current() *policy.Compiled {
	if r.Policy != nil {
		return r.Policy()
	}
	return r.held.Load()
}

func (r *Relay) log() *slog.Logger {
	if r.Logger != nil {
		return r.Logger
	}
	return slog.Default()
}

func (r *Relay) resolver() Resolver {
	if r.Resolver != nil {
		return r.Resolver
	}
	return net.DefaultResolver
}

// Serve handles connections from ln until ctx ends or ln fails, then closes the open
// streams and waits for their goroutines.
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

// errSecretsUnknown is the 503 answer before the relay has the sandbox's credentials.
const errSecretsUnknown = "the sandbox's provider credentials are not known yet (the VM runner has not fetched them from the gateway); retry shortly"

// errPolicyUnknown is the 503 answer before the relay knows the sandbox policy.
const errPolicyUnknown = "the sandbox policy is not known yet (the VM runner has not fetched it from the gateway); retry shortly"

// ServeConn handles one guest stream; it returns when the request is answered or
// the tunnel ends, and closes c (at the latest when ctx ends).
func (r *Relay) ServeConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	rt := r.ReadTimeout
	if rt <= 0 {
		rt = 30 * time.Second
	}
	c.SetReadDeadline(time.Now().Add(rt))
	lr := &io.LimitedReader{R: c, N: 64 << 10}
	br := bufio.NewReader(lr)
	req, err := http.ReadRequest(br)
	if err != nil {
		r.log().Debug("egress relay: unreadable request from the guest", "err", err)
		return
	}
	c.SetReadDeadline(time.Time{})
	lr.N = 1<<63 - 1
	switch {
	case req.Method == http.MethodConnect && req.Header.Get(OriginateHeader) != "":
		r.connect(ctx, c, &stream{br: br, lr: lr, rt: rt}, req)
	case req.Method == http.MethodConnect:
		r.connect(ctx, c, &stream{br: br}, req)
	case req.Method == http.MethodGet && req.URL.Path == "/v1/resolve":
		r.resolve(ctx, c, req.URL.Query().Get("name"))
	case req.Method == http.MethodGet && req.URL.Path == "/v1/credentials":
		r.placeholders(c)
	default:
		writeError(c, http.StatusMethodNotAllowed, "use CONNECT ip:port, GET /v1/resolve?name= or GET /v1/credentials")
	}
}

// stream is the guest side of a relay request after its head: br holds what was
// read past it. For originated TLS lr bounds the inner request's head (rt its
// reading time); nil for a plain tunnel.
type stream struct {
	br *bufio.Reader
	lr *io.LimitedReader
	rt time.Duration
}

// refuse answers code with reason and reports it as an event and a log line.
func (r *Relay) refuse(c net.Conn, ev Event, code int, reason string) {
	ev.Action, ev.Reason, ev.Status = "deny", reason, code
	lvl := slog.LevelInfo
	msg := "egress relay: refused"
	switch code {
	case http.StatusForbidden:
	case http.StatusServiceUnavailable:
		ev.Action, lvl, msg = "error", slog.LevelWarn, "egress relay: refused: the sandbox policy is not known yet"
	default:
		ev.Action, msg = "error", "egress relay: failed"
	}
	if r.OnEvent != nil {
		r.OnEvent(ev)
	}
	r.log().Log(context.Background(), lvl, msg, "method", ev.Method, "host", ev.Host, "port", ev.Port,
		"addr", ev.Addr, "rule", ev.Rule, "status", code, "reason", reason)
	writeError(c, code, reason)
}

// checkAddr decides whether the relay may dial or hand out ip for a request host
// whose policy decision is d.
func (r *Relay) checkAddr(host string, ip netip.Addr, d policy.Decision) error {
	if len(d.AllowedIPs) > 0 && !containsAddr(d.AllowedIPs, ip) {
		return fmt.Errorf("address %s not in allowed_ips of %s", ip, d.Endpoint)
	}
	if r.Guard != nil {
		return r.Guard(ip, d)
	}
	if len(d.AllowedIPs) == 0 && !d.Explicit && IsInternal(ip, r.InternalPrefixes) {
		return fmt.Errorf("SSRF guard: %s → internal address %s (name it exactly as an endpoint host or list it in allowed_ips)", host, ip)
	}
	return nil
}

func (r *Relay) connect(ctx context.Context, c net.Conn, st *stream, req *http.Request) {
	hs, ps, err := net.SplitHostPort(req.RequestURI)
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
	ip = ip.Unmap().WithZone("")
	host := req.Header.Get(HostHeader)
	if host == "" {
		host = ip.String()
	}
	ap := netip.AddrPortFrom(ip, uint16(port))
	ev := Event{Time: time.Now(), Method: "RELAY", Host: host, Port: port, Addr: ap.String()}
	pol := r.current()
	if pol == nil {
		r.refuse(c, ev, http.StatusServiceUnavailable, errPolicyUnknown)
		return
	}
	d := pol.Destination(host, port)
	ev.Rule = d.Rule
	if !d.Allow {
		r.refuse(c, ev, http.StatusForbidden, d.Reason)
		return
	}
	if isIPLiteral(host) && mustIP(host) != ip {
		r.refuse(c, ev, http.StatusForbidden, "the address "+ip.String()+" does not match the requested IP host "+host)
		return
	}
	if err := r.checkAddr(host, ip, d); err != nil {
		r.refuse(c, ev, http.StatusForbidden, err.Error())
		return
	}
	if !isIPLiteral(host) && !r.pins.has(host, ip, time.Now()) {
		// Not an address this relay handed out for host lately: ask the resolver.
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		addrs, err := r.lookup(lctx, host)
		cancel()
		if err != nil {
			r.refuse(c, ev, http.StatusBadGateway, "lookup of "+host+" to check the address: "+err.Error())
			return
		}
		r.pins.add(host, addrs, time.Now())
		if !r.pins.has(host, ip, time.Now()) {
			r.refuse(c, ev, http.StatusForbidden, fmt.Sprintf("the address %s is not one of %s's (%s): the relay connects a name only to the addresses the host resolves for it", ip, host, joinAddrs(addrs)))
			return
		}
	}
	var sec HostSecrets
	if st.lr != nil && r.Secrets != nil {
		if sec = r.Secrets(); sec == nil {
			r.refuse(c, ev, http.StatusServiceUnavailable, errSecretsUnknown)
			return
		}
	}
	dial := r.Dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	up, err := dial(dctx, "tcp", ap.String())
	cancel()
	if err != nil {
		r.refuse(c, ev, http.StatusBadGateway, "dial: "+err.Error())
		return
	}
	defer up.Close()
	stop := context.AfterFunc(ctx, func() { up.Close() })
	defer stop()
	if st.lr != nil {
		ev.Method = "RELAY-TLS"
		tc, err := r.handshake(ctx, up, host)
		if err != nil {
			r.refuse(c, ev, http.StatusBadGateway, err.Error())
			return
		}
		up = tc
	}
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	ev.Action, ev.Reason = action(d), d.Reason
	if r.OnEvent != nil {
		r.OnEvent(ev)
	}
	if st.lr != nil {
		r.originate(c, st, up, host, port, sec, ev)
		return
	}
	br := st.br
	// Bytes the guest sent right behind its request belong to the tunnel.
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		if _, err := up.Write(b); err != nil {
			return
		}
		br.Discard(n)
	}
	Splice(c, up)
}

// resolve answers a guest's name lookup, only for names some endpoint of the policy
// names, and only with addresses a CONNECT to that name could reach.
func (r *Relay) resolve(ctx context.Context, c net.Conn, name string) {
	if name == "" {
		writeError(c, http.StatusBadRequest, "name is empty")
		return
	}
	ev := Event{Time: time.Now(), Method: "RESOLVE", Host: name}
	pol := r.current()
	if pol == nil {
		r.refuse(c, ev, http.StatusServiceUnavailable, errPolicyUnknown)
		return
	}
	ds := nameDecisions(pol, name)
	if len(ds) == 0 {
		r.refuse(c, ev, http.StatusForbidden, fmt.Sprintf(
			"lookup of %s refused: no network_policies endpoint of the sandbox policy allows host %s (on any port); add one (e.g. host: %s, port: 443)",
			name, name, name))
		return
	}
	ev.Rule = ds[0].Rule
	lctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	addrs, err := r.lookup(lctx, name)
	cancel()
	if err != nil {
		r.refuse(c, ev, http.StatusBadGateway, err.Error())
		return
	}
	var ok []netip.Addr
	var refused []string
	for _, a := range addrs {
		a = a.Unmap().WithZone("")
		var why error
		for _, d := range ds {
			if why = r.checkAddr(name, a, d); why == nil {
				break
			}
		}
		if why != nil {
			refused = append(refused, why.Error())
			continue
		}
		ok = append(ok, a)
	}
	if len(ok) == 0 && len(refused) > 0 {
		r.refuse(c, ev, http.StatusForbidden, "lookup of "+name+" refused: every address is refused: "+strings.Join(refused, "; "))
		return
	}
	r.pins.add(name, ok, time.Now())
	WriteResolveAnswer(c, ok)
}

func joinAddrs(addrs []netip.Addr) string {
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = a.String()
	}
	return strings.Join(out, ", ")
}

func (r *Relay) lookup(ctx context.Context, name string) ([]netip.Addr, error) {
	if isIPLiteral(name) {
		return []netip.Addr{mustIP(name)}, nil
	}
	return r.resolver().LookupNetIP(ctx, "ip", name)
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

func isIPLiteral(s string) bool {
	_, err := netip.ParseAddr(strings.Trim(s, "[]"))
	return err == nil
}

func mustIP(s string) netip.Addr {
	a, _ := netip.ParseAddr(strings.Trim(s, "[]"))
	return a.Unmap().WithZone("")
}
