package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"google.golang.org/protobuf/proto"
	"gopkg.in/yaml.v3"

	"github.com/openshell/openshell/api/sandboxv1"
)

// ToProto converts a policy to the wire message (SandboxSpec.policy, GetSandboxConfig).
func (p *Policy) ToProto() *sandboxv1.SandboxPolicy {
	out := &sandboxv1.SandboxPolicy{
		Version: uint32(p.Version),
		Filesystem: &sandboxv1.FilesystemPolicy{
			IncludeWorkdir: p.Filesystem.IncludeWorkdir,
			ReadOnly:       append([]string(nil), p.Filesystem.ReadOnly...),
			ReadWrite:      append([]string(nil), p.Filesystem.ReadWrite...),
		},
		Landlock: &sandboxv1.LandlockPolicy{Compatibility: p.Landlock.Compatibility},
		Process:  &sandboxv1.ProcessPolicy{RunAsUser: p.Process.RunAsUser, RunAsGroup: p.Process.RunAsGroup},
	}
	if len(p.NetworkPolicies) > 0 {
		out.NetworkPolicies = map[string]*sandboxv1.NetworkPolicyRule{}
	}
	for name, r := range p.NetworkPolicies {
		pr := &sandboxv1.NetworkPolicyRule{Name: r.Name}
		for _, e := range r.Endpoints {
			pe := &sandboxv1.NetworkEndpoint{
				Host: e.Host, Port: uint32(e.Port), Protocol: e.Protocol, Tls: e.TLS,
				Enforcement: e.Enforcement, Access: e.Access,
				AllowedIps: append([]string(nil), e.AllowedIPs...),
			}
			for _, port := range e.Ports {
				pe.Ports = append(pe.Ports, uint32(port))
			}
			pe.AllowEncodedSlash = e.AllowEncodedSlash
			for _, r := range e.Rules {
				pe.Rules = append(pe.Rules, &sandboxv1.L7Rule{Allow: &sandboxv1.L7Allow{Method: r.Method, Path: r.Path, Query: queryToProto(r.Query)}})
			}
			for _, r := range e.DenyRules {
				pe.DenyRules = append(pe.DenyRules, &sandboxv1.L7DenyRule{Method: r.Method, Path: r.Path, Query: queryToProto(r.Query)})
			}
			pr.Endpoints = append(pr.Endpoints, pe)
		}
		for _, b := range r.Binaries {
			pr.Binaries = append(pr.Binaries, &sandboxv1.NetworkBinary{Path: b.Path, Ancestors: b.Ancestors})
		}
		out.NetworkPolicies[name] = pr
	}
	return out
}

// FromProto converts and validates a wire policy. A nil message yields Default().
// Fields this supervisor cannot enforce (L7 rules, middlewares, request signing) are
// refused rather than ignored, so that a policy never silently means less than it says.
func FromProto(m *sandboxv1.SandboxPolicy) (*Policy, error) {
	if m == nil {
		return Default(), nil
	}
	var errs fieldErrors
	p := &Policy{Version: int(m.GetVersion()), NetworkPolicies: map[string]*NetworkRule{}}
	if fs := m.GetFilesystem(); fs != nil {
		p.Filesystem = Filesystem{IncludeWorkdir: fs.GetIncludeWorkdir(),
			ReadOnly: append([]string(nil), fs.GetReadOnly()...), ReadWrite: append([]string(nil), fs.GetReadWrite()...)}
	}
	p.Landlock.Compatibility = m.GetLandlock().GetCompatibility()
	p.Process = Process{RunAsUser: m.GetProcess().GetRunAsUser(), RunAsGroup: m.GetProcess().GetRunAsGroup()}
	if len(m.GetNetworkMiddlewares()) > 0 {
		errs.add("network_middlewares", 0, "network middlewares are not supported by this supervisor: remove them")
	}
	for name, r := range m.GetNetworkPolicies() {
		nr := &NetworkRule{Name: r.GetName()}
		for i, e := range r.GetEndpoints() {
			base := fmt.Sprintf("network_policies.%s.endpoints[%d]", name, i)
			if e.GetCredentialSigning() != "" {
				errs.add(base+".credential_signing", 0, "request signing is not supported")
			}
			if e.GetPath() != "" {
				errs.add(base+".path", 0, "path-scoped endpoints are not supported")
			}
			for _, f := range []struct {
				name string
				set  bool
			}{
				{"persisted_queries", e.GetPersistedQueries() != ""},
				{"graphql_persisted_queries", len(e.GetGraphqlPersistedQueries()) > 0},
				{"signing_service", e.GetSigningService() != ""},
				{"signing_region", e.GetSigningRegion() != ""},
				{"mcp", e.GetMcp() != nil},
			} {
				if f.set {
					errs.add(base+"."+f.name, 0, f.name+" is not supported: openshell enforces the L7 rules of protocol: rest only; remove it")
				}
			}
			ne := Endpoint{Host: e.GetHost(), Port: int(e.GetPort()), Protocol: e.GetProtocol(), TLS: e.GetTls(),
				Enforcement: e.GetEnforcement(), Access: e.GetAccess(), AllowedIPs: append([]string(nil), e.GetAllowedIps()...),
				AllowEncodedSlash: e.GetAllowEncodedSlash()}
			for j, r := range e.GetRules() {
				rp := fmt.Sprintf("%s.rules[%d].allow", base, j)
				a := r.GetAllow()
				if a == nil {
					errs.add(rp, 0, "is required: each rules entry is {allow: {method, path, query}}")
					continue
				}
				unsupportedRuleProto(&errs, rp, a.GetCommand(), a.GetOperationType(), a.GetOperationName(), a.GetFields(), a.GetParams())
				ne.Rules = append(ne.Rules, L7Rule{Method: a.GetMethod(), Path: a.GetPath(), Query: queryFromProto(a.GetQuery())})
			}
			for j, r := range e.GetDenyRules() {
				rp := fmt.Sprintf("%s.deny_rules[%d]", base, j)
				unsupportedRuleProto(&errs, rp, r.GetCommand(), r.GetOperationType(), r.GetOperationName(), r.GetFields(), r.GetParams())
				ne.DenyRules = append(ne.DenyRules, L7Rule{Method: r.GetMethod(), Path: r.GetPath(), Query: queryFromProto(r.GetQuery())})
			}
			for _, port := range e.GetPorts() {
				ne.Ports = append(ne.Ports, int(port))
			}
			if e.GetPort() > 65535 {
				ne.Port = -1 // reported by validate
			}
			nr.Endpoints = append(nr.Endpoints, ne)
		}
		for _, b := range r.GetBinaries() {
			nr.Binaries = append(nr.Binaries, Binary{Path: b.GetPath(), Ancestors: b.GetAncestors()})
		}
		p.NetworkPolicies[name] = nr
	}
	p.validate(&errs, nil)
	if err := errs.err(); err != nil {
		return nil, err
	}
	p.normalize()
	return p, nil
}

// unsupportedRuleProto refuses the L7 rule fields of protocols other than rest.
func unsupportedRuleProto(errs *fieldErrors, base, command, opType, opName string, fields []string, params map[string]*sandboxv1.L7QueryMatcher) {
	for _, f := range []struct {
		name string
		set  bool
	}{{"command", command != ""}, {"operation_type", opType != ""}, {"operation_name", opName != ""}, {"fields", len(fields) > 0}, {"params", len(params) > 0}} {
		if f.set {
			errs.add(base+"."+f.name, 0, f.name+" is not supported: openshell enforces the L7 rules of protocol: rest only (method, path, query); remove it")
		}
	}
}

func queryToProto(q map[string]QueryMatcher) map[string]*sandboxv1.L7QueryMatcher {
	if len(q) == 0 {
		return nil
	}
	out := make(map[string]*sandboxv1.L7QueryMatcher, len(q))
	for k, m := range q {
		out[k] = &sandboxv1.L7QueryMatcher{Glob: m.Glob, Any: append([]string(nil), m.Any...)}
	}
	return out
}

func queryFromProto(q map[string]*sandboxv1.L7QueryMatcher) map[string]QueryMatcher {
	if len(q) == 0 {
		return nil
	}
	out := make(map[string]QueryMatcher, len(q))
	for k, m := range q {
		out[k] = QueryMatcher{Glob: m.GetGlob(), Any: append([]string(nil), m.GetAny()...)}
	}
	return out
}

// yaml output shapes: field order and names of the policy file.
type (
	yPolicy struct {
		Version    int               `yaml:"version"`
		Filesystem *yFilesystem      `yaml:"filesystem_policy,omitempty"`
		Landlock   *yLandlock        `yaml:"landlock,omitempty"`
		Process    *yProcess         `yaml:"process,omitempty"`
		Network    map[string]*yRule `yaml:"network_policies,omitempty"`
	}
	yFilesystem struct {
		IncludeWorkdir bool     `yaml:"include_workdir"`
		ReadOnly       []string `yaml:"read_only,omitempty"`
		ReadWrite      []string `yaml:"read_write,omitempty"`
	}
	yLandlock struct {
		Compatibility string `yaml:"compatibility"`
	}
	yProcess struct {
		RunAsUser  string `yaml:"run_as_user,omitempty"`
		RunAsGroup string `yaml:"run_as_group,omitempty"`
	}
	yRule struct {
		Name      string      `yaml:"name,omitempty"`
		Endpoints []yEndpoint `yaml:"endpoints"`
		Binaries  []yBinary   `yaml:"binaries,omitempty"`
	}
	yEndpoint struct {
		Host        string   `yaml:"host"`
		Port        int      `yaml:"port,omitempty"`
		Ports       []int    `yaml:"ports,omitempty,flow"`
		Protocol    string   `yaml:"protocol,omitempty"`
		TLS         string   `yaml:"tls,omitempty"`
		Enforcement string   `yaml:"enforcement,omitempty"`
		Access      string   `yaml:"access,omitempty"`
		AllowedIPs  []string `yaml:"allowed_ips,omitempty"`
		Rules       []yAllow `yaml:"rules,omitempty"`
		DenyRules   []yL7    `yaml:"deny_rules,omitempty"`
		EncSlash    bool     `yaml:"allow_encoded_slash,omitempty"`
	}
	yAllow struct {
		Allow yL7 `yaml:"allow"`
	}
	yL7 struct {
		Method string            `yaml:"method,omitempty"`
		Path   string            `yaml:"path,omitempty"`
		Query  map[string]yQuery `yaml:"query,omitempty"`
	}
	yQuery struct {
		Glob string   `yaml:"glob,omitempty"`
		Any  []string `yaml:"any,omitempty"`
	}
	yBinary struct {
		Path      string `yaml:"path"`
		Ancestors bool   `yaml:"ancestors,omitempty"`
	}
)

// MarshalYAML renders the policy as a policy file that Parse reads back unchanged.
func (p *Policy) Marshal() ([]byte, error) {
	y := yPolicy{
		Version:    p.Version,
		Filesystem: &yFilesystem{IncludeWorkdir: p.Filesystem.IncludeWorkdir, ReadOnly: p.Filesystem.ReadOnly, ReadWrite: p.Filesystem.ReadWrite},
		Landlock:   &yLandlock{Compatibility: p.Landlock.Compatibility},
	}
	if p.Landlock.Compatibility == "" {
		y.Landlock = nil
	}
	if p.Process != (Process{}) {
		y.Process = &yProcess{RunAsUser: p.Process.RunAsUser, RunAsGroup: p.Process.RunAsGroup}
	}
	if len(p.NetworkPolicies) > 0 {
		y.Network = map[string]*yRule{}
	}
	for name, r := range p.NetworkPolicies {
		yr := &yRule{Name: r.Name}
		if yr.Name == name {
			yr.Name = ""
		}
		for _, e := range r.Endpoints {
			ye := yEndpoint{Host: e.Host, Port: e.Port, Ports: e.Ports, Protocol: e.Protocol, TLS: e.TLS,
				Enforcement: e.Enforcement, Access: e.Access, AllowedIPs: e.AllowedIPs, EncSlash: e.AllowEncodedSlash}
			for _, r := range e.Rules {
				ye.Rules = append(ye.Rules, yAllow{Allow: yl7(r)})
			}
			for _, r := range e.DenyRules {
				ye.DenyRules = append(ye.DenyRules, yl7(r))
			}
			yr.Endpoints = append(yr.Endpoints, ye)
		}
		for _, b := range r.Binaries {
			yr.Binaries = append(yr.Binaries, yBinary(b))
		}
		y.Network[name] = yr
	}
	return yaml.Marshal(&y)
}

// Hash is the policy_hash of GetSandboxConfig: hex SHA-256 of the deterministic
// protobuf encoding (equal policies hash equally, whatever their map order).
func Hash(m *sandboxv1.SandboxPolicy) string {
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func yl7(r L7Rule) yL7 {
	y := yL7{Method: r.Method, Path: r.Path}
	if len(r.Query) > 0 {
		y.Query = map[string]yQuery{}
		for k, q := range r.Query {
			y.Query[k] = yQuery(q)
		}
	}
	return y
}
