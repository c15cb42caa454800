// Package egress is the sandbox's egress proxy: the only way out of the sandbox. It
// speaks HTTP CONNECT and absolute-form HTTP (a forward proxy) on a listener the
// supervisor gives it, identifies the calling binary through /proc, asks the compiled
// policy, refuses internal addresses after DNS resolution (and dials the address it
// checked, so DNS rebinding cannot swap it), and reports every decision as an Event.
//
// L7 rules: for an endpoint with REST rules (protocol: rest, see package policy) every
// request the proxy sees is decided on its own, by method, path and query exactly as
// they are forwarded: absolute-form http:// requests, and requests inside a CONNECT
// tunnel the proxy terminates (tls: terminate, with the sandbox CA that
// Config.Credentials serves). A tunnel to such an endpoint is never spliced: without
// tls: terminate, or without Credentials to terminate with, it is refused. Refused
// requests get a 403 naming the endpoint, method, path and the fix, and never reach
// the server.
//
// Wiring: the supervisor creates one Proxy per sandbox with New, runs Serve on its
// listener (loopback in a VM guest, the host side of the agent's veth in a container),
// calls SetPolicy whenever GetSandboxConfig returns a new policy version, and puts
// ChildEnv(url, caFile) into the agent's environment.
package egress

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/openshell/openshell/supervisor/policy"
)

// Event is one proxy decision; the supervisor ships it to the gateway as a log line.
// It never carries header values, so credentials cannot leak through it.
type Event struct {
	Time   time.Time
	Action string // "allow", "audit", "deny", "error"
	Method string // CONNECT or the HTTP method
	Host   string
	Port   int
	// Path is the request path as sent (escaped, never the query: query strings
	// often carry tokens), "" for tunnels.
	Path      string
	Addr      string // the address dialed (after resolution), "" when not dialed
	PID       int
	Binary    string
	Ancestors []string
	Rule      string
	Reason    string
	Status    int // HTTP status the client got from the proxy (0 for a tunnel that was opened)
}

// String renders the event as one log line.
func (e Event) String() string {
	path := ""
	if e.Path != "" {
		path = fmt.Sprintf(" path=%q", e.Path)
	}
	return fmt.Sprintf("egress %s %s %s:%d binary=%s pid=%d rule=%q addr=%s status=%d%s: %s",
		e.Action, e.Method, e.Host, e.Port, orUnknown(e.Binary), e.PID, e.Rule, e.Addr, e.Status, path, e.Reason)
}

// Credentials is the hook for credential placeholders (package credentials implements
// it). The proxy terminates TLS for hosts it names and rewrites request headers.
type Credentials interface {
	// Terminate reports whether a CONNECT tunnel to host:port must be TLS-terminated.
	Terminate(host string, port int) bool
	// ServerTLS is the server-side config for terminated tunnels (certificates for
	// any SNI, signed by the sandbox CA).
	ServerTLS() *tls.Config
	// Rewrite swaps placeholders in h for real values when host is bound to their
	// provider and the request travels over TLS (overTLS); it returns an error
	// naming the mismatch when h holds a placeholder it must not resolve there. It
	// must not log header values.
	Rewrite(host string, overTLS bool, h http.Header) error
}

// Redactor is implemented by Credentials that can take the real values back out of
// response headers (package credentials does); the proxy calls it on every response
// from a terminated tunnel.
type Redactor interface {
	Redact(h http.Header) int
}

// Resolver resolves host names (net.DefaultResolver satisfies it).
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Config configures a Proxy. Only Policy is required.
type Config struct {
	Policy *policy.Compiled
	// OnEvent receives every decision; it is called on the connection's goroutine and
	// must not block for long.
	OnEvent func(Event)
	// Dial opens upstream connections (default: net.Dialer). A VM guest passes
	// RunnerDialer(open a vsock stream to the runner's egress port), with Resolver
	// set to RunnerResolver on the same port. The address is always the checked
	// IP:port, never a name.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Resolver for host names (default net.DefaultResolver).
	Resolver Resolver
	// Identifier finds the calling process (default &ProcIdentifier{}).
	Identifier Identifier
	// InternalPrefixes are extra addresses treated like loopback: the sandbox's own
	// interfaces, the gateway's, the veth subnet.
	InternalPrefixes []netip.Prefix
	// Credentials enables TLS termination and placeholder rewriting (optional).
	Credentials Credentials
	// UpstreamRoots verifies upstream servers of terminated tunnels (nil = system roots).
	UpstreamRoots *x509.CertPool
	// OriginateTLS, when set, carries each request of a terminated tunnel instead of
	// Dial and TLS: the other end makes the TLS connection to host at addr and the
	// returned stream takes the plaintext request (a VM guest: RunnerOriginator, so
	// that the runner on the host puts the real credential values in).
	OriginateTLS func(ctx context.Context, host string, addr netip.AddrPort) (net.Conn, error)
	// DialTimeout bounds an upstream dial (default 10s).
	DialTimeout time.Duration
	Logger      *slog.Logger
}

// Validate names the first bad field.
func (c *Config) Validate() error {
	if c.Policy == nil {
		return errors.New("egress: Config.Policy is nil: compile one with policy.Compile (policy.Default() for no network)")
	}
	if c.DialTimeout < 0 {
		return errors.New("egress: Config.DialTimeout is negative")
	}
	return nil
}

// Proxy is the egress proxy. Create it with New.
type Proxy struct {
	cfg    Config
	policy atomic.Pointer[policy.Compiled]
	log    *slog.Logger

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	lns    map[net.Listener]struct{}
	closed bool
	wg     sync.WaitGroup
}

// New validates cfg and fills defaults.
func New(cfg Config) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Dial == nil {
		d := &net.Dialer{}
		cfg.Dial = d.DialContext
	}
	if cfg.Resolver == nil {
		cfg.Resolver = net.DefaultResolver
	}
	if cfg.Identifier == nil {
		cfg.Identifier = &ProcIdentifier{}
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	p := &Proxy{cfg: cfg, log: cfg.Logger, conns: map[net.Conn]struct{}{}, lns: map[net.Listener]struct{}{}}
	p.policy.Store(cfg.Policy)
	return p, nil
}

// SetPolicy replaces the policy; requests (and CONNECT tunnels) started afterwards use
// it. Tunnels already open are not cut.
func (p *Proxy) SetPolicy(c *policy.Compiled) {
	if c != nil {
		p.policy.Store(c)
	}
}

// Policy returns the policy in force.
func (p *Proxy) Policy() *policy.Compiled { return p.policy.Load() }

// Serve accepts connections until ctx ends, ln fails or Close is called.
func (p *Proxy) Serve(ctx context.Context, ln net.Listener) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return net.ErrClosed
	}
	p.lns[ln] = struct{}{}
	p.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			p.mu.Lock()
			delete(p.lns, ln)
			closed := p.closed
			p.mu.Unlock()
			if closed || ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("egress: accept on %s: %w", ln.Addr(), err)
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.ServeConn(ctx, c)
		}()
	}
}

// Close stops every listener given to Serve, closes open connections and waits for
// their goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	for ln := range p.lns {
		ln.Close()
	}
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return nil
}

func (p *Proxy) track(c net.Conn, add bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		if p.closed {
			return false
		}
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
	return true
}

// conn is the per-client state.
type conn struct {
	p      *Proxy
	c      net.Conn
	br     *bufio.Reader
	idOnce sync.Once
	id     Identity
	idErr  error
}

func (cc *conn) identity() Identity {
	cc.idOnce.Do(func() { cc.id, cc.idErr = cc.p.cfg.Identifier.Identify(cc.c) })
	return cc.id
}

// ServeConn serves one client connection (exported for tests and for listeners the
// supervisor accepts itself). It returns when the client is done.
func (p *Proxy) ServeConn(ctx context.Context, c net.Conn) {
	if !p.track(c, true) {
		c.Close()
		return
	}
	defer p.track(c, false)
	defer c.Close()
	lr := &io.LimitedReader{R: c}
	cc := &conn{p: p, c: c, br: bufio.NewReaderSize(lr, 16<<10)}
	for {
		req, err := readRequest(c, lr, cc.br)
		if err != nil {
			return
		}
		if req.Method == http.MethodConnect {
			cc.connect(ctx, req)
			return
		}
		if !cc.forward(ctx, req, nil) {
			return
		}
	}
}

// Limits while reading a request head (bodies are not limited).
const (
	maxHeaderBytes = 1 << 20
	idleTimeout    = 5 * time.Minute
)

// readRequest reads one request head from br (which reads from lr over c), bounded
// in size and idle time, and answers malformed or oversized ones itself.
func readRequest(c net.Conn, lr *io.LimitedReader, br *bufio.Reader) (*http.Request, error) {
	lr.N = maxHeaderBytes
	c.SetReadDeadline(time.Now().Add(idleTimeout))
	req, err := http.ReadRequest(br)
	c.SetReadDeadline(time.Time{})
	exhausted := lr.N == 0
	lr.N = math.MaxInt64
	if err != nil {
		switch {
		case exhausted:
			writeError(c, http.StatusRequestHeaderFieldsTooLarge, "openshell egress proxy: request head over 1 MiB\n")
			// Read what the client still sends for a moment: closing with unread
			// input resets the connection and can destroy the answer in flight.
			c.SetReadDeadline(time.Now().Add(time.Second))
			io.Copy(io.Discard, io.LimitReader(c, 4<<20))
		case !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, os.ErrDeadlineExceeded):
			writeError(c, http.StatusBadRequest, "openshell egress proxy: malformed request: "+err.Error())
		}
		return nil, err
	}
	return req, nil
}

// target splits host:port with a default port.
func target(hostport string, defPort int) (string, int, error) {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		if strings.Contains(err.Error(), "missing port") {
			host, portStr = strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]"), strconv.Itoa(defPort)
		} else {
			return "", 0, err
		}
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", portStr)
	}
	if host == "" {
		return "", 0, errors.New("empty host")
	}
	return host, port, nil
}

func (cc *conn) event(ev Event, d policy.Decision) {
	id := cc.identity()
	ev.Time = time.Now()
	ev.PID, ev.Binary, ev.Ancestors = id.PID, id.Exe, id.Ancestors
	if ev.Rule == "" {
		ev.Rule = d.Rule
	}
	if ev.Reason == "" {
		ev.Reason = d.Reason
	}
	if f := cc.p.cfg.OnEvent; f != nil {
		f(ev)
	}
}

// decide evaluates the policy and the address check; it returns the checked address
// to dial, or a refusal already reported to the client and the event callback. u is
// the request's URL when the proxy sees the request (nil for CONNECT): L7 rules
// match its path and query, exactly as they are sent upstream.
func (cc *conn) decide(ctx context.Context, w io.Writer, method, host string, port int, u *url.URL) (netip.AddrPort, policy.Decision, bool) {
	id := cc.identity()
	if errors.Is(cc.idErr, ErrSharedSocket) {
		// Fail closed: whichever process sends, the rule of the other would apply.
		reason := cc.idErr.Error()
		cc.event(Event{Action: "deny", Method: method, Host: host, Port: port, Status: http.StatusForbidden, Reason: reason}, policy.Decision{})
		writeError(w, http.StatusForbidden, refusal(host, port, id, reason))
		return netip.AddrPort{}, policy.Decision{}, false
	}
	pol := cc.p.policy.Load()
	r := policy.Request{Host: host, Port: port, Binaries: id.Binaries(), Taint: id.Taint, Method: methodForPolicy(method)}
	if u != nil {
		r.Path, r.Query = u.EscapedPath(), u.RawQuery
	}
	d := pol.Evaluate(r)
	ev := Event{Method: method, Host: host, Port: port, Path: r.Path}
	if !d.Allow {
		ev.Action, ev.Status = "deny", http.StatusForbidden
		cc.event(ev, d)
		writeError(w, http.StatusForbidden, refusal(host, port, id, d.Reason))
		return netip.AddrPort{}, d, false
	}
	addr, err := cc.p.resolveChecked(ctx, host, port, d)
	if err != nil {
		ev.Action, ev.Status, ev.Reason = "deny", http.StatusForbidden, err.Error()
		cc.event(ev, d)
		writeError(w, http.StatusForbidden, refusal(host, port, id, err.Error()))
		return netip.AddrPort{}, d, false
	}
	return addr, d, true
}

func methodForPolicy(m string) string {
	if m == http.MethodConnect {
		return ""
	}
	return m
}

func refusal(host string, port int, id Identity, reason string) string {
	return fmt.Sprintf("openshell: egress to %s:%d refused for binary %s.\n%s\nTo allow it, change the sandbox's network_policies and apply it with `openshell policy set <sandbox> --policy FILE`.\n",
		host, port, orUnknown(id.Exe), reason)
}

func orUnknown(s string) string {
	if s == "" {
		return "(unknown)"
	}
	return s
}

func (p *Proxy) dial(ctx context.Context, host string, addr netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(dialWithHost(ctx, host), p.cfg.DialTimeout)
	defer cancel()
	return p.cfg.Dial(ctx, "tcp", addr.String())
}

// connect handles a CONNECT request: decide, dial, then splice (or terminate TLS).
func (cc *conn) connect(ctx context.Context, req *http.Request) {
	host, port, err := target(req.RequestURI, 443)
	if err != nil {
		writeError(cc.c, http.StatusBadRequest, "openshell egress proxy: CONNECT target must be host:port: "+err.Error())
		return
	}
	addr, d, ok := cc.decide(ctx, cc.c, http.MethodConnect, host, port, nil)
	if !ok {
		return
	}
	creds := cc.p.cfg.Credentials
	if d.L7 && d.TLSTerminate && !d.Audit && creds == nil {
		// Splicing would let every request inside through unchecked.
		reason := fmt.Sprintf("%s has L7 rules and tls: terminate, but this proxy has no sandbox CA to terminate TLS with (the supervisor gives it one with the sandbox's credentials store)", d.Endpoint)
		cc.event(Event{Action: "deny", Method: http.MethodConnect, Host: host, Port: port, Status: http.StatusForbidden, Reason: reason}, d)
		writeError(cc.c, http.StatusForbidden, refusal(host, port, cc.identity(), reason))
		return
	}
	if creds != nil && (creds.Terminate(host, port) || d.TLSTerminate) {
		io.WriteString(cc.c, "HTTP/1.1 200 Connection Established\r\n\r\n")
		cc.event(Event{Action: action(d), Method: http.MethodConnect, Host: host, Port: port, Addr: addr.String(), Reason: d.Reason + " (TLS terminated by the proxy)"}, d)
		cc.terminate(ctx, host, port)
		return
	}
	up, err := cc.p.dial(ctx, host, addr)
	if err != nil {
		cc.event(Event{Action: "error", Method: http.MethodConnect, Host: host, Port: port, Addr: addr.String(), Status: http.StatusBadGateway, Reason: "dial: " + err.Error()}, d)
		writeError(cc.c, http.StatusBadGateway, fmt.Sprintf("openshell egress proxy: cannot reach %s:%d (%s): %v\n", host, port, addr, err))
		return
	}
	defer up.Close()
	cc.event(Event{Action: action(d), Method: http.MethodConnect, Host: host, Port: port, Addr: addr.String()}, d)
	if _, err := io.WriteString(cc.c, "HTTP/1.1 200 Connection Established\r\n\r\n"); err != nil {
		return
	}
	// Bytes the client pipelined after the CONNECT head are still in the reader.
	if n := cc.br.Buffered(); n > 0 {
		b, _ := cc.br.Peek(n)
		if _, err := up.Write(b); err != nil {
			return
		}
		cc.br.Discard(n)
	}
	Splice(cc.c, up)
}

func action(d policy.Decision) string {
	if d.Audit {
		return "audit"
	}
	return "allow"
}

// Splice copies both ways until both directions end, half-closing each side so the
// other sees EOF; io.Copy between TCP connections uses splice(2). The VM runner's
// end of the egress relay uses it too.
func Splice(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		} else {
			dst.Close()
		}
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	<-done
}

// terminate serves HTTP requests inside a TLS tunnel the proxy terminates.
func (cc *conn) terminate(ctx context.Context, host string, port int) {
	// The ClientHello may already sit in the reader if the client pipelined it.
	tc := tls.Server(&bufConn{Conn: cc.c, r: cc.br}, cc.p.cfg.Credentials.ServerTLS())
	hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		cc.p.log.Debug("egress: client TLS handshake failed", "host", host, "err", err)
		return
	}
	lr := &io.LimitedReader{R: tc}
	inner := &conn{p: cc.p, c: tc, br: bufio.NewReader(lr), id: cc.identity(), idErr: cc.idErr}
	inner.idOnce.Do(func() {})
	for {
		req, err := readRequest(tc, lr, inner.br)
		if err != nil {
			return
		}
		if !inner.forward(ctx, req, &tunnelTarget{host: host, port: port}) {
			return
		}
	}
}

// CheckTunnelHost refuses a request inside a TLS tunnel to host:port whose Host
// header, or absolute-form URL, names another host or port (names compare
// case-insensitively and without a trailing dot; a Host without a port means the
// tunnel's). An empty Host is set to the tunnel's. The VM runner applies it to the
// requests a guest hands it, as the proxy does inside the tunnels it terminates.
func CheckTunnelHost(r *http.Request, host string, port int) error {
	if r.URL != nil && r.URL.Host != "" {
		if !sameHostPort(r.URL.Host, host, port) {
			return fmt.Errorf("request URL names host %q inside the tunnel to %s: requests in a tunnel must address its host (send this one through its own CONNECT)", r.URL.Host, net.JoinHostPort(host, strconv.Itoa(port)))
		}
	}
	if r.Host == "" {
		r.Host = host
		if strings.Contains(host, ":") {
			r.Host = "[" + host + "]"
		}
		if port != 443 {
			r.Host = net.JoinHostPort(host, strconv.Itoa(port))
		}
		return nil
	}
	if !sameHostPort(r.Host, host, port) {
		return fmt.Errorf("the Host header %q does not name the tunnel's host %s: requests in a tunnel must address its host (send this one through its own CONNECT)", r.Host, net.JoinHostPort(host, strconv.Itoa(port)))
	}
	return nil
}

// sameHostPort reports whether hostport ("name", "name:port", "[v6]:port") names
// host and port.
func sameHostPort(hostport, host string, port int) bool {
	h, p, err := net.SplitHostPort(hostport)
	switch {
	case err != nil: // no port: a name, a bracketed or a bare IPv6 literal
		h = hostport
		if strings.HasPrefix(h, "[") || strings.HasSuffix(h, "]") {
			if len(h) < 2 || h[0] != '[' || h[len(h)-1] != ']' {
				return false
			}
			h = h[1 : len(h)-1]
		}
	case p == "" || strings.Trim(p, "0123456789") != "":
		return false
	default:
		if n, err := strconv.Atoi(p); err != nil || n != port {
			return false
		}
	}
	norm := func(s string) string { return strings.ToLower(strings.TrimSuffix(s, ".")) }
	if h == "" || strings.ContainsAny(h, "%@/ ") || norm(h) != norm(host) {
		return false
	}
	return true
}

// bufConn reads through a bufio.Reader that may hold bytes already read from Conn.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

type tunnelTarget struct {
	host string
	port int
}

var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authorization", "Proxy-Authenticate", "Te", "Trailer", "Upgrade"}

// forward sends one HTTP request upstream and relays the response. tt is set inside a
// terminated TLS tunnel (origin-form requests, TLS upstream). It reports whether the
// client connection may serve another request.
func (cc *conn) forward(ctx context.Context, req *http.Request, tt *tunnelTarget) bool {
	defer req.Body.Close()
	var host string
	var port int
	useTLS := false
	if tt != nil {
		host, port, useTLS = tt.host, tt.port, true
	} else {
		if req.URL == nil || !req.URL.IsAbs() || req.URL.Host == "" {
			writeError(cc.c, http.StatusBadRequest, "openshell egress proxy: requests must use absolute-form (http://host/path) or CONNECT; set HTTP_PROXY/HTTPS_PROXY\n")
			return false
		}
		if req.URL.Scheme != "http" {
			writeError(cc.c, http.StatusBadRequest, fmt.Sprintf("openshell egress proxy: scheme %q is not proxied: use CONNECT for https\n", req.URL.Scheme))
			return false
		}
		var err error
		host, port, err = target(req.URL.Host, 80)
		if err != nil {
			writeError(cc.c, http.StatusBadRequest, "openshell egress proxy: bad target: "+err.Error()+"\n")
			return false
		}
	}
	if tt != nil {
		// The policy and the credentials were checked for the tunnel's host; a Host
		// naming another one would let a shared front end (CDN, virtual hosts) route
		// the request, and its headers, to a server nobody allowed.
		if err := CheckTunnelHost(req, host, port); err != nil {
			d := policy.Decision{}
			cc.event(Event{Action: "deny", Method: req.Method, Host: host, Port: port, Status: http.StatusForbidden, Reason: err.Error()}, d)
			writeError(cc.c, http.StatusForbidden, refusal(host, port, cc.identity(), err.Error()))
			return false
		}
	}
	addr, d, ok := cc.decide(ctx, cc.c, req.Method, host, port, req.URL)
	if !ok {
		return false
	}
	path := ""
	if req.URL != nil {
		path = req.URL.EscapedPath()
	}
	for _, h := range hopHeaders {
		req.Header.Del(h)
	}
	if creds := cc.p.cfg.Credentials; creds != nil {
		if err := creds.Rewrite(host, useTLS, req.Header); err != nil {
			cc.event(Event{Action: "deny", Method: req.Method, Host: host, Port: port, Path: path, Status: http.StatusForbidden, Reason: err.Error()}, d)
			writeError(cc.c, http.StatusForbidden, refusal(host, port, cc.identity(), err.Error()))
			return false
		}
	}
	// VM hand-off (OriginateTLS): the runner makes the TLS connection instead.
	dial, originate := cc.p.dial, useTLS && cc.p.cfg.OriginateTLS != nil
	if originate {
		dial = cc.p.originate
	}
	up, err := dial(ctx, host, addr)
	if err != nil {
		cc.event(Event{Action: "error", Method: req.Method, Host: host, Port: port, Path: path, Addr: addr.String(), Status: http.StatusBadGateway, Reason: "dial: " + err.Error()}, d)
		writeError(cc.c, http.StatusBadGateway, fmt.Sprintf("openshell egress proxy: cannot reach %s:%d (%s): %v\n", host, port, addr, err))
		return false
	}
	defer up.Close()
	if useTLS && !originate {
		tc := tls.Client(up, &tls.Config{ServerName: host, RootCAs: cc.p.cfg.UpstreamRoots, MinVersion: tls.VersionTLS12})
		if err := tc.HandshakeContext(ctx); err != nil {
			cc.event(Event{Action: "error", Method: req.Method, Host: host, Port: port, Path: path, Addr: addr.String(), Status: http.StatusBadGateway, Reason: "upstream TLS: " + err.Error()}, d)
			writeError(cc.c, http.StatusBadGateway, fmt.Sprintf("openshell egress proxy: TLS to %s:%d failed: %v\n", host, port, err))
			return false
		}
		up = tc
	}
	cc.event(Event{Action: action(d), Method: req.Method, Host: host, Port: port, Path: path, Addr: addr.String()}, d)
	clientClose := req.Close
	req.Close = true // one upstream connection per request: the decision is per request
	req.RequestURI = ""
	if err := req.Write(up); err != nil {
		writeError(cc.c, http.StatusBadGateway, fmt.Sprintf("openshell egress proxy: sending to %s:%d failed: %v\n", host, port, err))
		return false
	}
	ubr := bufio.NewReaderSize(up, 32<<10)
	resp, err := http.ReadResponse(ubr, req)
	if err != nil {
		writeError(cc.c, http.StatusBadGateway, fmt.Sprintf("openshell egress proxy: bad response from %s:%d: %v\n", host, port, err))
		return false
	}
	defer resp.Body.Close()
	for _, h := range hopHeaders {
		resp.Header.Del(h)
	}
	if r, ok := cc.p.cfg.Credentials.(Redactor); ok && useTLS {
		if n := r.Redact(resp.Header); n > 0 {
			cc.p.log.Info("egress: credential values removed from a response's headers", "host", host, "count", n)
		}
	}
	resp.Close = clientClose
	if resp.ContentLength > 0 && len(resp.TransferEncoding) == 0 && req.Method != http.MethodHead && resp.StatusCode >= 200 {
		// Fixed-length body: write the head, then move the body with io.CopyN so that
		// a TCP upstream is spliced to the client without passing through user space.
		if err := writeHead(cc.c, resp); err != nil {
			return false
		}
		left := resp.ContentLength
		if n := int64(ubr.Buffered()); n > 0 {
			b, _ := ubr.Peek(int(min(n, left)))
			if _, err := cc.c.Write(b); err != nil {
				return false
			}
			ubr.Discard(len(b))
			left -= int64(len(b))
		}
		if n, err := io.CopyN(cc.c, up, left); err != nil || n != left {
			return false
		}
		return !clientClose
	}
	if err := resp.Write(cc.c); err != nil {
		return false
	}
	return !clientClose
}

// writeError writes a complete text/plain response with Connection: close.
func writeError(w io.Writer, status int, body string) {
	fmt.Fprintf(w, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		status, http.StatusText(status), len(body), body)
}

// writeHead writes the status line and headers of a fixed-length response.
func writeHead(w io.Writer, resp *http.Response) error {
	bw := bufio.NewWriterSize(w, 4096)
	fmt.Fprintf(bw, "HTTP/1.1 %s\r\n", resp.Status)
	resp.Header.Del("Content-Length")
	if err := resp.Header.Write(bw); err != nil {
		return err
	}
	fmt.Fprintf(bw, "Content-Length: %d\r\n", resp.ContentLength)
	if resp.Close {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
	return bw.Flush()
}
