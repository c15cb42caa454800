// Package serviceproxy routes HTTP requests on the gateway's services listener to a
// port inside a sandbox. A request names its service either by path
// (/<sandbox>/<service>/...) or, when a services domain is configured, by host
// (<service>--<sandbox>.<domain>). The proxy never dials into a sandbox: its transport
// opens a relay through the sandbox's supervisor, which dials the port inside the
// agent's network namespace.
package serviceproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Sentinels a Resolver wraps; the handler maps them to HTTP statuses.
var (
	ErrNotFound  = errors.New("no such service")
	ErrAmbiguous = errors.New("service name is ambiguous")
)

// Route names one exposed service.
type Route struct {
	Sandbox, Service string
}

// Target is where a route leads: a port inside a sandbox.
type Target struct {
	SandboxID string
	Port      uint32
}

// Resolver looks a route up in the gateway's service records.
type Resolver func(ctx context.Context, r Route) (Target, error)

// Dialer opens a byte stream to a port inside a sandbox (through its supervisor).
type Dialer func(ctx context.Context, sandboxID string, port uint32) (net.Conn, error)

// HostLabel is the first DNS label of a service's host name under the services domain.
// Service names never contain "--", so the first "--" separates the two names.
func HostLabel(sandbox, service string) string { return service + "--" + sandbox }

// Parse finds the route in a request's host and path. domain is the configured services
// domain ("" = path routing only). rest is the path to send to the service (always
// starting with '/'); redirect is true when the path names a service without the
// trailing slash (the client should retry at path+"/" so relative links resolve).
func Parse(host, path, domain string) (rt Route, rest string, redirect bool, ok bool) {
	if domain != "" {
		h := host
		if hh, _, err := net.SplitHostPort(host); err == nil {
			h = hh
		}
		h = strings.TrimSuffix(strings.ToLower(h), ".")
		suffix := "." + strings.ToLower(strings.TrimSuffix(domain, "."))
		if label, found := strings.CutSuffix(h, suffix); found {
			svc, sb, cut := strings.Cut(label, "--")
			if !cut || !isLabel(svc) || !isLabel(sb) || strings.Contains(svc, "--") {
				return Route{}, "", false, false
			}
			if path == "" || path[0] != '/' {
				path = "/" + path
			}
			return Route{Sandbox: sb, Service: svc}, path, false, true
		}
	}
	p, found := strings.CutPrefix(path, "/")
	if !found {
		return Route{}, "", false, false
	}
	sb, after, _ := strings.Cut(p, "/")
	svc, tail, slash := strings.Cut(after, "/")
	if !isLabel(sb) || !isLabel(svc) || strings.Contains(svc, "--") {
		return Route{}, "", false, false
	}
	if !slash {
		return Route{Sandbox: sb, Service: svc}, "/", true, true
	}
	return Route{Sandbox: sb, Service: svc}, "/" + tail, false, true
}

// isLabel reports whether s is a DNS label (lowercase, at most 63 characters).
func isLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

type ctxKey struct{}

// Handler is the services listener's HTTP handler.
type Handler struct {
	domain  string
	resolve Resolver
	log     *slog.Logger
	proxy   *httputil.ReverseProxy
	tr      *http.Transport
}

// New builds a handler. domain may be "" (path routing only).
func New(domain string, resolve Resolver, dial Dialer, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.Default()
	}
	h := &Handler{domain: domain, resolve: resolve, log: log}
	// The transport's address is "<sandbox-id>:<port>": idle connections are pooled
	// per sandbox and port, and a re-exposed service on another port gets new ones.
	h.tr = &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			id, ps, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			port, err := strconv.ParseUint(ps, 10, 16)
			if err != nil {
				return nil, fmt.Errorf("service port %q: %w", ps, err)
			}
			return dial(ctx, id, uint32(port))
		},
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       30 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
	}
	h.proxy = &httputil.ReverseProxy{
		Transport: h.tr,
		Rewrite: func(pr *httputil.ProxyRequest) {
			t := pr.In.Context().Value(ctxKey{}).(proxied)
			pr.SetXForwarded()
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = net.JoinHostPort(t.target.SandboxID, strconv.FormatUint(uint64(t.target.Port), 10))
			pr.Out.URL.Path = t.rest
			pr.Out.URL.RawPath = ""
			// The service sees the host name the client used.
			pr.Out.Host = pr.In.Host
			if t.prefix != "" {
				pr.Out.Header.Set("X-Forwarded-Prefix", t.prefix)
			}
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			t := r.Context().Value(ctxKey{}).(proxied)
			h.log.Warn("service proxy", "sandbox_id", t.target.SandboxID, "port", t.target.Port, "err", err)
			http.Error(w, fmt.Sprintf("openshell: service %s of sandbox %s (port %d) did not answer: %v", t.route.Service, t.route.Sandbox, t.target.Port, err), http.StatusBadGateway)
		},
	}
	return h
}

type proxied struct {
	route  Route
	target Target
	rest   string
	prefix string
}

// Close drops idle connections to sandboxes.
func (h *Handler) Close() { h.tr.CloseIdleConnections() }

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	rt, rest, redirect, ok := Parse(r.Host, path, h.domain)
	if !ok {
		http.Error(w, "openshell: no service here; service URLs look like /<sandbox>/<service>/ (see openshell service list)", http.StatusNotFound)
		return
	}
	// Path routes answer only requests addressed to loopback: a web page whose DNS
	// name rebinds to 127.0.0.1 sends its own name as Host, and must not reach
	// sandbox services from the user's browser.
	if !h.isHostRoute(r.Host) && !loopbackHost(r.Host) {
		http.Error(w, fmt.Sprintf("openshell: requests for host %q are refused; use the URL `openshell service list` prints (127.0.0.1 or localhost)", r.Host), http.StatusMisdirectedRequest)
		return
	}
	if redirect {
		u := *r.URL
		u.Path += "/"
		u.RawPath = ""
		http.Redirect(w, r, u.RequestURI(), http.StatusPermanentRedirect)
		return
	}
	t, err := h.resolve(r.Context(), rt)
	switch {
	case errors.Is(err, ErrNotFound):
		http.Error(w, fmt.Sprintf("openshell: sandbox %s has no service %s (openshell service list %s)", rt.Sandbox, rt.Service, rt.Sandbox), http.StatusNotFound)
		return
	case errors.Is(err, ErrAmbiguous):
		http.Error(w, "openshell: "+err.Error(), http.StatusConflict)
		return
	case err != nil:
		http.Error(w, "openshell: "+err.Error(), http.StatusBadGateway)
		return
	}
	p := proxied{route: rt, target: t, rest: rest}
	if strings.HasSuffix(path, rest) && len(path) > len(rest) && !h.isHostRoute(r.Host) {
		p.prefix = strings.TrimSuffix(path, rest)
	}
	h.proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, p)))
}

func loopbackHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.Trim(host, "[]"), ".")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (h *Handler) isHostRoute(host string) bool {
	if h.domain == "" {
		return false
	}
	_, _, _, ok := Parse(host, "", h.domain)
	return ok
}

// URL is the address of a route on a services listener at hostport: path-prefixed, or
// host-based under domain when domain is not "".
func URL(hostport string, rt Route, domain string) string {
	if domain != "" {
		_, port, err := net.SplitHostPort(hostport)
		if err != nil {
			port = ""
		}
		h := HostLabel(rt.Sandbox, rt.Service) + "." + strings.TrimSuffix(domain, ".")
		if port != "" {
			h = net.JoinHostPort(h, port)
		}
		return (&url.URL{Scheme: "http", Host: h, Path: "/"}).String()
	}
	return (&url.URL{Scheme: "http", Host: hostport, Path: "/" + rt.Sandbox + "/" + rt.Service + "/"}).String()
}
