package credentials

// The split store of a VM sandbox. The runner on the host builds the Store (real
// values) and serves its Placeholders to the guest; the guest's supervisor builds a
// Guest from them: the agent's environment, the bound hosts its proxy terminates TLS
// for, and an early refusal of placeholders sent where they could never be resolved.
// The guest's proxy hands requests of terminated tunnels to the runner, whose Store
// puts the values in (egress.Relay). No real value ever enters the guest.

import (
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"

	"github.com/openshell/openshell/supervisor/egress"
)

// Placeholders implements egress.HostSecrets: each provider's placeholders and bound
// hosts, sorted by provider name; never a value.
func (s *Store) Placeholders() []egress.PlaceholderProvider {
	by := map[string]*egress.PlaceholderProvider{}
	for ph, sec := range s.placeholders {
		p := by[sec.provider]
		if p == nil {
			p = &egress.PlaceholderProvider{Name: sec.provider, Env: map[string]string{}, Hosts: slices.Clone(sec.hosts)}
			by[sec.provider] = p
		}
		p.Env[sec.key] = ph
	}
	out := make([]egress.PlaceholderProvider, 0, len(by))
	for _, name := range slices.Sorted(maps.Keys(by)) {
		out = append(out, *by[name])
	}
	return out
}

// Values implements egress.HostSecrets: the real values, for masking them in
// answers on the host. Never for the guest.
func (s *Store) Values() []string {
	out := make([]string, 0, len(s.placeholders))
	for _, sec := range s.placeholders {
		out = append(out, sec.value)
	}
	return out
}

var _ egress.HostSecrets = (*Store)(nil)

// Guest is the guest side of a VM sandbox's credentials: placeholders only. It
// implements egress.Credentials; the values are put in by the runner.
type Guest struct {
	ca    *CA
	env   []string
	phs   map[string]*secret // placeholder → provider, key and hosts (value empty)
	hosts []string
}

var _ egress.Credentials = (*Guest)(nil)

// NewGuest checks what the runner sent (names, keys, placeholder format, hosts) and
// builds the guest side. A placeholder that does not name its provider and key is
// refused: the agent would see one thing and the runner resolve another.
func NewGuest(ca *CA, providers []egress.PlaceholderProvider) (*Guest, error) {
	if ca == nil {
		return nil, errors.New("credentials: CA is nil: create one with NewCA")
	}
	g := &Guest{ca: ca, phs: map[string]*secret{}}
	owner := map[string]string{}
	for i, p := range providers {
		if !nameRE().MatchString(p.Name) {
			return nil, fmt.Errorf("credentials: providers[%d] name %q from the runner: 1-64 letters, digits, '.', '_' or '-'", i, p.Name)
		}
		if len(p.Env) == 0 || len(p.Hosts) == 0 {
			return nil, fmt.Errorf("credentials: provider %s from the runner has no placeholders or no bound host", p.Name)
		}
		for _, h := range p.Hosts {
			if h == "" || strings.Contains(strings.TrimPrefix(h, "*."), "*") || strings.ContainsAny(h, " /\r\n") {
				return nil, fmt.Errorf("credentials: provider %s from the runner: bound host %q is not a host name", p.Name, h)
			}
		}
		for _, k := range slices.Sorted(maps.Keys(p.Env)) {
			ph := p.Env[k]
			if !keyRE().MatchString(k) {
				return nil, fmt.Errorf("credentials: provider %s from the runner: key %q is not an environment variable name", p.Name, k)
			}
			if !placeholderRE().MatchString(ph) || len(placeholderRE().FindString(ph)) != len(ph) || !strings.HasPrefix(ph, PlaceholderPrefix+p.Name+":"+k+":") {
				return nil, fmt.Errorf("credentials: provider %s from the runner: %s is not a placeholder of %s/%s", p.Name, k, p.Name, k)
			}
			if o, dup := owner[k]; dup {
				return nil, fmt.Errorf("credentials: %s is exported by providers %s and %s", k, o, p.Name)
			}
			owner[k] = p.Name
			g.phs[ph] = &secret{provider: p.Name, key: k, hosts: normHosts(p.Hosts)}
			g.env = append(g.env, k+"="+ph)
		}
		g.hosts = append(g.hosts, normHosts(p.Hosts)...)
	}
	return g, nil
}

// Env is KEY=placeholder for every credential, for the agent's environment.
func (g *Guest) Env() []string { return slices.Clone(g.env) }

// Terminate implements egress.Credentials: tunnels to bound hosts are opened, so
// that their requests reach the runner in plaintext.
func (g *Guest) Terminate(host string, _ int) bool { return hostMatches(g.hosts, host) }

// ServerTLS implements egress.Credentials.
func (g *Guest) ServerTLS() *tls.Config { return g.ca.TLSConfig() }

// Rewrite implements egress.Credentials without a value to put in: it refuses, as
// the Store would, a placeholder the runner could never resolve for this request
// (unknown, bound to another host, over plain HTTP) and leaves the others for the
// runner, which also checks the headers its provider names.
func (g *Guest) Rewrite(host string, overTLS bool, h http.Header) error {
	for _, vals := range h {
		for _, v := range vals {
			for _, ph := range placeholdersIn(v) {
				if err := mismatch(g.phs[ph], host, overTLS); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// placeholdersIn finds placeholders in a header value, also inside a Basic
// credential.
func placeholdersIn(v string) []string {
	out := placeholderRE().FindAllString(v, -1)
	if enc, ok := strings.CutPrefix(v, "Basic "); ok {
		if dec, err := base64.StdEncoding.DecodeString(strings.TrimSpace(enc)); err == nil {
			out = append(out, placeholderRE().FindAllString(string(dec), -1)...)
		}
	}
	return out
}
