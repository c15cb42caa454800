// Package credentials keeps provider secrets out of the sandbox. The agent's
// environment holds only placeholders (openshell-placeholder:<provider>:<KEY>:<random>);
// the egress proxy terminates TLS for the hosts a provider is bound to (with the
// per-sandbox CA the agent trusts) and swaps placeholders in request headers for the
// real values there. A placeholder sent to any other host, or over plain HTTP, is
// refused with a 403 naming the mismatch. Real values never reach the environment,
// files, arguments or logs.
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
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// Provider is one set of credentials and the hosts they may be sent to.
type Provider struct {
	Name        string
	Type        string            // e.g. "github", "generic" (informational here)
	Credentials map[string]string // env KEY → real value
	Hosts       []string          // bound hosts: exact names/IPs or "*.example.com" (one label)
}

// PlaceholderPrefix starts every placeholder.
const PlaceholderPrefix = "openshell-placeholder:"

var (
	nameRE        = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)
	keyRE         = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)
	placeholderRE = regexp.MustCompile(`openshell-placeholder:[A-Za-z0-9_.-]{1,64}:[A-Za-z0-9_]{1,128}:[0-9a-f]{32}`)
)

// Validate names the first bad field.
func (p *Provider) Validate() error {
	switch {
	case !nameRE.MatchString(p.Name):
		return fmt.Errorf("credentials: provider name %q: use 1-64 letters, digits, '.', '_' or '-'", p.Name)
	case len(p.Credentials) == 0:
		return fmt.Errorf("credentials: provider %s has no credentials", p.Name)
	case len(p.Hosts) == 0:
		return fmt.Errorf("credentials: provider %s is bound to no host: its placeholders could never be resolved", p.Name)
	}
	for k, v := range p.Credentials {
		if !keyRE.MatchString(k) {
			return fmt.Errorf("credentials: provider %s: key %q is not an environment variable name", p.Name, k)
		}
		if v == "" || strings.ContainsAny(v, "\r\n\x00") {
			return fmt.Errorf("credentials: provider %s: value of %s is empty or contains CR, LF or NUL", p.Name, k)
		}
	}
	for _, h := range p.Hosts {
		if h == "" || strings.Contains(strings.TrimPrefix(h, "*."), "*") {
			return fmt.Errorf("credentials: provider %s: bound host %q: exact name or \"*.example.com\"", p.Name, h)
		}
	}
	return nil
}

type secret struct {
	provider, key, value string
	hosts                []string
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
			s.placeholders[ph] = &secret{provider: p.Name, key: k, value: p.Credentials[k], hosts: normHosts(p.Hosts)}
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
	Reason              string
}

func (e *MismatchError) Error() string {
	if e.Provider == "" {
		return fmt.Sprintf("credential placeholder refused for %s: %s", e.Host, e.Reason)
	}
	return fmt.Sprintf("credential placeholder %s/%s refused for %s: %s", e.Provider, e.Key, e.Host, e.Reason)
}

// Rewrite implements egress.Credentials: in every header value, placeholders of
// providers bound to host are replaced by the real value (also inside
// "Authorization: Basic" credentials); any other placeholder refuses the request.
func (s *Store) Rewrite(host string, overTLS bool, h http.Header) error {
	var firstErr error
	replace := func(v string) string {
		return placeholderRE.ReplaceAllStringFunc(v, func(ph string) string {
			sec, ok := s.placeholders[ph]
			switch {
			case !ok:
				if firstErr == nil {
					firstErr = &MismatchError{Host: host, Reason: "unknown placeholder (not issued to this sandbox)"}
				}
			case !hostMatches(sec.hosts, host):
				if firstErr == nil {
					firstErr = &MismatchError{Provider: sec.provider, Key: sec.key, Host: host,
						Reason: fmt.Sprintf("provider %s is bound to %s, not to %s", sec.provider, strings.Join(sec.hosts, ", "), host)}
				}
			case !overTLS:
				if firstErr == nil {
					firstErr = &MismatchError{Provider: sec.provider, Key: sec.key, Host: host, Reason: "credentials are only sent over HTTPS"}
				}
			default:
				return sec.value
			}
			return ph
		})
	}
	for name, vals := range h {
		for i, v := range vals {
			if strings.EqualFold(name, "Authorization") || strings.EqualFold(name, "Proxy-Authorization") {
				if enc, ok := strings.CutPrefix(v, "Basic "); ok {
					if dec, err := base64.StdEncoding.DecodeString(strings.TrimSpace(enc)); err == nil && strings.Contains(string(dec), PlaceholderPrefix) {
						vals[i] = "Basic " + base64.StdEncoding.EncodeToString([]byte(replace(string(dec))))
						continue
					}
				}
			}
			if strings.Contains(v, PlaceholderPrefix) {
				vals[i] = replace(v)
			}
		}
	}
	if firstErr != nil {
		return firstErr
	}
	return nil
}
