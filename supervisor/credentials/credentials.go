// Package credentials keeps provider secrets out of the sandbox. The agent's
// environment holds only placeholders (openshell-placeholder:<provider>:<KEY>:<random>);
// the egress proxy terminates TLS for the hosts a provider is bound to (with the
// per-sandbox CA the agent trusts) and swaps placeholders for the real values there,
// in the request headers the provider names (Authorization unless it says otherwise).
// A placeholder sent to any other host, over plain HTTP, or in a header the provider
// does not name, is refused with a 403 naming the mismatch: a header the server
// reflects (Origin into Access-Control-Allow-Origin, a custom header into an echo
// endpoint) would otherwise hand the real value back to the agent. Real values never
// reach the environment, files, arguments or logs.
//
// Bound hosts are exact names unless the provider sets AllowWildcardHosts: a
// "*.example.com" binding sends the secret to every host under the domain, including
// ones the agent can make resolve or route elsewhere, so it must be asked for.
//
// Wiring: the supervisor builds a Store from the providers it receives, writes
// ca.WriteBundle(path), passes the Store as egress.Config.Credentials, and adds
// store.Env() plus egress.ChildEnv(proxyURL, path) to the agent's environment.
package credentials

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
)

// Provider is one set of credentials and the hosts they may be sent to.
type Provider struct {
	Name        string
	Type        string            // e.g. "github", "generic" (informational here)
	Credentials map[string]string // env KEY → real value
	Hosts       []string          // bound hosts: exact names/IPs, or "*.example.com" (one label) with AllowWildcardHosts
	// Headers names the request headers whose placeholders are replaced
	// (case-insensitive); empty = DefaultHeaders. A placeholder of this provider in
	// any other header refuses the request.
	Headers []string
	// AllowWildcardHosts admits "*.example.com" entries in Hosts.
	AllowWildcardHosts bool
}

// DefaultHeaders carry credentials when a provider names none.
var DefaultHeaders = []string{"Authorization"}

// refusedHeaders frame the message or belong to one hop (the proxy drops or rewrites
// them), or, for Host, route it: none may carry a credential.
var refusedHeaders = []string{"Host", "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authorization",
	"Proxy-Authenticate", "Te", "Trailer", "Transfer-Encoding", "Upgrade", "Content-Length"}

// tokenRE is an HTTP field name (RFC 9110 token). These patterns are compiled on
// first use: their counted repetitions make ~400 KB of program, which every
// process linking this package (the CLI included) would otherwise build at start.
var tokenRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$") })

// ValidateBinding checks where the credentials may go: Hosts, Headers and the
// wildcard opt-in (the gateway checks this at provider create; New again).
func (p *Provider) ValidateBinding() error {
	for i, h := range p.Hosts {
		if h == "" || strings.Contains(strings.TrimPrefix(h, "*."), "*") {
			return fmt.Errorf("credentials: provider %s: hosts[%d] %q: use an exact host name, e.g. api.example.com", p.Name, i, h)
		}
		if suffix, ok := strings.CutPrefix(h, "*."); ok && !strings.Contains(strings.TrimSuffix(suffix, "."), ".") {
			return fmt.Errorf("credentials: provider %s: hosts[%d] %q is too broad: name at least two labels after *, e.g. \"*.example.com\"", p.Name, i, h)
		}
		if strings.HasPrefix(h, "*.") && !p.AllowWildcardHosts {
			return fmt.Errorf("credentials: provider %s: hosts[%d] %q is a wildcard, which would send the credentials to every host under %s: list the exact hosts, or, if every one of them may receive the credentials, create the provider with allow_wildcard_hosts (openshell provider create --allow-wildcard-hosts)",
				p.Name, i, h, strings.TrimPrefix(h, "*."))
		}
	}
	for i, h := range p.Headers {
		switch {
		case !tokenRE().MatchString(h):
			return fmt.Errorf("credentials: provider %s: headers[%d] %q is not an HTTP header name, e.g. Authorization or X-Api-Key", p.Name, i, h)
		case slices.ContainsFunc(refusedHeaders, func(r string) bool { return strings.EqualFold(r, h) }):
			return fmt.Errorf("credentials: provider %s: headers[%d] %q routes or frames the request and cannot carry credentials: name the header the service reads them from, e.g. Authorization", p.Name, i, h)
		}
	}
	return nil
}

// PlaceholderPrefix starts every placeholder.
const PlaceholderPrefix = "openshell-placeholder:"

var (
	nameRE        = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`) })
	keyRE         = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`) })
	placeholderRE = sync.OnceValue(func() *regexp.Regexp {
		return regexp.MustCompile(`openshell-placeholder:[A-Za-z0-9_.-]{1,64}:[A-Za-z0-9_]{1,128}:[0-9a-f]{32}`)
	})
)

// Validate names the first bad field.
func (p *Provider) Validate() error {
	switch {
	case !nameRE().MatchString(p.Name):
		return fmt.Errorf("credentials: provider name %q: use 1-64 letters, digits, '.', '_' or '-'", p.Name)
	case len(p.Credentials) == 0:
		return fmt.Errorf("credentials: provider %s has no credentials", p.Name)
	case len(p.Hosts) == 0:
		return fmt.Errorf("credentials: provider %s is bound to no host: its placeholders could never be resolved", p.Name)
	}
	for k, v := range p.Credentials {
		if !keyRE().MatchString(k) {
			return fmt.Errorf("credentials: provider %s: key %q is not an environment variable name", p.Name, k)
		}
		if v == "" || strings.ContainsAny(v, "\r\n\x00") {
			return fmt.Errorf("credentials: provider %s: value of %s is empty or contains CR, LF or NUL", p.Name, k)
		}
	}
	return p.ValidateBinding()
}

type secret struct {
	provider, key, value string
	hosts                []string
	headers              []string // canonical names
}

// Store holds one sandbox's providers. It implements egress.Credentials.
type Store struct {
	ca           *CA
	env          []string
	placeholders map[string]*secret // placeholder → secret
	hosts        []string           // all bound hosts
}

// New builds a store: one fresh placeholder per credential. Two providers exporting
// the same KEY is an error (the environment can hold only one).
func New(ca *CA, providers []Provider) (*Store, error) {
	if ca == nil {
		return nil, errors.New("credentials: CA is nil: create one with NewCA")
	}
	s := &Store{ca: ca, placeholders: map[string]*secret{}}
	owner := map[string]string{}
	for _, p := range providers {
		if err := p.Validate(); err != nil {
			return nil, err
		}
		headers := DefaultHeaders
		if len(p.Headers) > 0 {
			headers = nil
			for _, h := range p.Headers {
				headers = append(headers, http.CanonicalHeaderKey(h))
			}
		}
		keys := make([]string, 0, len(p.Credentials))
		for k := range p.Credentials {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if o, dup := owner[k]; dup {
				return nil, fmt.Errorf("credentials: %s is exported by providers %s and %s: rename one", k, o, p.Name)
			}
			owner[k] = p.Name
			var r [16]byte
			rand.Read(r[:])
			ph := PlaceholderPrefix + p.Name + ":" + k + ":" + hex.EncodeToString(r[:])
			s.placeholders[ph] = &secret{provider: p.Name, key: k, value: p.Credentials[k], hosts: normHosts(p.Hosts), headers: headers}
			s.env = append(s.env, k+"="+ph)
		}
		s.hosts = append(s.hosts, normHosts(p.Hosts)...)
	}
	return s, nil
}

func normHosts(hs []string) []string {
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = strings.ToLower(strings.TrimSuffix(h, "."))
	}
	return out
}

// Env is KEY=placeholder for every credential, for the agent's environment.
func (s *Store) Env() []string { return slices.Clone(s.env) }

// CA is the store's certificate authority.
func (s *Store) CA() *CA { return s.ca }

func hostMatches(patterns []string, host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, p := range patterns {
		if p == host {
			return true
		}
		if suffix, ok := strings.CutPrefix(p, "*"); ok && strings.HasSuffix(host, suffix) {
			if first := strings.TrimSuffix(host, suffix); first != "" && !strings.Contains(first, ".") {
				return true
			}
		}
	}
	return false
}

// Terminate implements egress.Credentials: tunnels to bound hosts are opened.
func (s *Store) Terminate(host string, _ int) bool { return hostMatches(s.hosts, host) }

// ServerTLS implements egress.Credentials.
func (s *Store) ServerTLS() *tls.Config { return s.ca.TLSConfig() }

// MismatchError is a placeholder that must not be resolved for this request. It
// names the provider and key, never a value.
type MismatchError struct {
	Provider, Key, Host string
	Header              string // set when the header was the mismatch
	Reason              string
}

func (e *MismatchError) Error() string {
	if e.Provider == "" {
		return fmt.Sprintf("credential placeholder refused for %s: %s", e.Host, e.Reason)
	}
	return fmt.Sprintf("credential placeholder %s/%s refused for %s: %s", e.Provider, e.Key, e.Host, e.Reason)
}

// Rewrite implements egress.Credentials: placeholders of providers bound to host, in
// the headers those providers name, are replaced by the real value (also inside
// "Authorization: Basic" credentials when Authorization is named). Any other
// placeholder refuses the request: unknown, bound elsewhere, over plain HTTP, or in a
// header its provider does not name. Refusing rather than leaving it verbatim keeps
// the decision visible (a 403 and an event naming the header) and never shows a
// third party the placeholder. h is changed only when the request may go.
func (s *Store) Rewrite(host string, overTLS bool, h http.Header) error {
	var firstErr error
	fail := func(err *MismatchError) {
		if firstErr == nil {
			firstErr = err
		}
	}
	replace := func(header, v string) string {
		return placeholderRE().ReplaceAllStringFunc(v, func(ph string) string {
			sec := s.placeholders[ph]
			if err := mismatch(sec, host, overTLS); err != nil {
				fail(err)
				return ph
			}
			if !slices.Contains(sec.headers, header) {
				fail(&MismatchError{Provider: sec.provider, Key: sec.key, Host: host, Header: header,
					Reason: fmt.Sprintf("header %s may not carry it: provider %s sends its credentials only in %s; put the placeholder there, or create the provider with --header %s if the service reads it from %s",
						header, sec.provider, strings.Join(sec.headers, ", "), header, header)})
				return ph
			}
			return sec.value
		})
	}
	out := http.Header{}
	for _, name := range slices.Sorted(maps.Keys(h)) { // sorted: the same request always names the same refusal
		cname := http.CanonicalHeaderKey(name)
		vals := slices.Clone(h[name])
		for i, v := range vals {
			if cname == "Authorization" || cname == "Proxy-Authorization" {
				if enc, ok := strings.CutPrefix(v, "Basic "); ok {
					if dec, err := base64.StdEncoding.DecodeString(strings.TrimSpace(enc)); err == nil && strings.Contains(string(dec), PlaceholderPrefix) {
						vals[i] = "Basic " + base64.StdEncoding.EncodeToString([]byte(replace(cname, string(dec))))
						continue
					}
				}
			}
			if strings.Contains(v, PlaceholderPrefix) {
				vals[i] = replace(cname, v)
			}
		}
		out[name] = vals
	}
	if firstErr != nil {
		return firstErr
	}
	maps.Copy(h, out)
	return nil
}

// mismatch says why the placeholder of sec (nil: not issued to this sandbox) may
// not go to host, or returns nil. The Store and the Guest refuse alike.
func mismatch(sec *secret, host string, overTLS bool) *MismatchError {
	switch {
	case sec == nil:
		return &MismatchError{Host: host, Reason: "unknown placeholder (not issued to this sandbox)"}
	case !hostMatches(sec.hosts, host):
		return &MismatchError{Provider: sec.provider, Key: sec.key, Host: host,
			Reason: fmt.Sprintf("provider %s is bound to %s, not to %s", sec.provider, strings.Join(sec.hosts, ", "), host)}
	case !overTLS:
		return &MismatchError{Provider: sec.provider, Key: sec.key, Host: host, Reason: "credentials are only sent over HTTPS"}
	}
	return nil
}

// minRedact is the shortest value Redact looks for: shorter ones would match
// unrelated text (and are no credential worth the name).
const minRedact = 8

// Redact implements egress.Redactor: every real value of this store found in the
// response headers is put back as its placeholder, so that a server reflecting a
// request header (an echo of Authorization, a debug header) hands the agent nothing
// it did not send. Bodies are not scanned: a bound host that echoes credentials in
// its bodies still returns them, so bind only hosts that do not. It reports how many
// values it replaced.
func (s *Store) Redact(h http.Header) int {
	n := 0
	for _, vals := range h {
		for i, v := range vals {
			for ph, sec := range s.placeholders {
				if len(sec.value) >= minRedact && strings.Contains(v, sec.value) {
					n += strings.Count(v, sec.value)
					v = strings.ReplaceAll(v, sec.value, ph)
				}
			}
			vals[i] = v
		}
	}
	return n
}
