package credentials

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/openshell/openshell/api/openshellv1"
)

// The providers of a sandbox travel to its supervisor (or, for a VM, its runner) in
// GetSandboxProviderEnvironment. That response is flat (one entry per credential key),
// so each key carries its provider's binding:
//   - environment[KEY]: the real value;
//   - static_credential_bindings[KEY]: credential_identity = provider name, one
//     endpoint per bound host (port 0 = any port);
//   - dynamic_credentials[KEY].header_name: the provider's header names joined with
//     "," (HTTP field names hold no comma); empty = DefaultHeaders.
// A wildcard host ("*.example.com") is only ever stored for a provider that allowed
// wildcards, so the decoder sets AllowWildcardHosts from the hosts.

// Where a provider's credentials may be sent is stored in upstream's
// Provider.config under these keys: hosts and headers as comma-separated lists
// (host names and header names hold no comma), allow_wildcard_hosts as "true".
const (
	ConfigHosts              = "hosts"
	ConfigHeaders            = "headers"
	ConfigAllowWildcardHosts = "allow_wildcard_hosts"
)

// FromConfig is the Provider for stored parts: its binding is read from config.
func FromConfig(name, typ string, creds, config map[string]string) Provider {
	return Provider{Name: name, Type: typ, Credentials: maps.Clone(creds), Hosts: splitList(config[ConfigHosts]),
		Headers: splitList(config[ConfigHeaders]), AllowWildcardHosts: config[ConfigAllowWildcardHosts] == "true"}
}

// Config is p's binding as Provider.config entries (nil when it sets none).
func (p Provider) Config() map[string]string {
	c := map[string]string{}
	if len(p.Hosts) > 0 {
		c[ConfigHosts] = strings.Join(p.Hosts, ",")
	}
	if len(p.Headers) > 0 {
		c[ConfigHeaders] = strings.Join(p.Headers, ",")
	}
	if p.AllowWildcardHosts {
		c[ConfigAllowWildcardHosts] = "true"
	}
	if len(c) == 0 {
		return nil
	}
	return c
}

// splitList reads a comma-separated config value; blanks are dropped.
func splitList(v string) []string {
	var out []string
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// EnvironmentResponse encodes ps; two providers with the same key are refused (the
// agent's environment has one variable per name).
func EnvironmentResponse(ps []Provider) (*openshellv1.GetSandboxProviderEnvironmentResponse, error) {
	resp := &openshellv1.GetSandboxProviderEnvironmentResponse{
		Environment:              map[string]string{},
		StaticCredentialBindings: map[string]*openshellv1.StaticCredentialBinding{},
		DynamicCredentials:       map[string]*openshellv1.ProviderProfileCredential{},
	}
	for _, p := range ps {
		for _, k := range slices.Sorted(maps.Keys(p.Credentials)) {
			if b, dup := resp.StaticCredentialBindings[k]; dup {
				return nil, fmt.Errorf("credentials: providers %s and %s both set %s; a sandbox's providers must use distinct keys", b.GetCredentialIdentity(), p.Name, k)
			}
			resp.Environment[k] = p.Credentials[k]
			b := &openshellv1.StaticCredentialBinding{CredentialIdentity: p.Name}
			for _, h := range p.Hosts {
				b.Endpoints = append(b.Endpoints, &openshellv1.StaticCredentialEndpointBinding{Host: h})
			}
			resp.StaticCredentialBindings[k] = b
			resp.DynamicCredentials[k] = &openshellv1.ProviderProfileCredential{Name: k, EnvVars: []string{k}, AuthStyle: "header", HeaderName: strings.Join(p.Headers, ",")}
		}
	}
	return resp, nil
}

// ProvidersFromEnvironment decodes EnvironmentResponse's encoding, every field
// included; a key without a binding is an error (it could never be sent anywhere).
func ProvidersFromEnvironment(resp *openshellv1.GetSandboxProviderEnvironmentResponse) ([]Provider, error) {
	byName := map[string]*Provider{}
	for _, k := range slices.Sorted(maps.Keys(resp.GetEnvironment())) {
		b := resp.GetStaticCredentialBindings()[k]
		name := b.GetCredentialIdentity()
		if name == "" {
			return nil, fmt.Errorf("credentials: credential %s has no static credential binding (provider name and hosts)", k)
		}
		p := byName[name]
		if p == nil {
			p = &Provider{Name: name, Credentials: map[string]string{}}
			for _, e := range b.GetEndpoints() {
				p.Hosts = append(p.Hosts, e.GetHost())
				if strings.HasPrefix(e.GetHost(), "*.") {
					p.AllowWildcardHosts = true
				}
			}
			if h := resp.GetDynamicCredentials()[k].GetHeaderName(); h != "" {
				p.Headers = strings.Split(h, ",")
			}
			byName[name] = p
		}
		p.Credentials[k] = resp.GetEnvironment()[k]
	}
	out := make([]Provider, 0, len(byName))
	for _, n := range slices.Sorted(maps.Keys(byName)) {
		out = append(out, *byName[n])
	}
	return out, nil
}
