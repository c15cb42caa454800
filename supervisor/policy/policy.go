// Package policy is the sandbox security policy: the YAML file users write
// (`version: 1`, filesystem_policy, landlock, process, network_policies), its
// validation with field paths and line numbers, its conversion to and from the
// openshell.sandbox.v1.SandboxPolicy message that travels in SandboxSpec.policy and
// GetSandboxConfig, and a compiled matcher the egress proxy asks for every connection.
//
// Semantics (the parts a policy author must know):
//   - Network: default deny. A connection is allowed when some endpoint of some named
//     rule matches its host and port AND the calling binary matches one of the rule's
//     `binaries` globs (a rule without binaries admits any binary). An entry with
//     `ancestors: true` also matches when an ancestor's executable does (children of
//     an allowed program inherit its rights only when the policy says so). A process
//     whose dynamic loader is steered by its environment (LD_PRELOAD, LD_AUDIT,
//     LD_LIBRARY_PATH) never matches a binary entry. Binary rules are a convenience
//     for writing policies, not a security boundary: a program allowed by path runs
//     whatever code it is given (an interpreter its script, git its hooks).
//   - enforcement: `enforce` (the default here; stricter than upstream's `audit`
//     default, on purpose) refuses a connection whose host and port an endpoint names
//     but whose binary or access preset does not fit; `audit` logs the same mismatch
//     and lets it through. Hosts no endpoint names are always refused.
//   - Hosts: exact names (case-insensitive), IP literals, or `*.example.com` where the
//     `*` stands for exactly one whole leading label.
//   - Internal addresses (loopback, link-local, private, unique-local, metadata) are
//     reachable only through an endpoint that names the host or IP exactly (not via a
//     wildcard), or whose allowed_ips lists the address.
//
// REST L7 rules (an endpoint with protocol: rest):
//   - rules: [{allow: {method, path, query}}] list the requests the endpoint lets
//     through; a request no entry matches is refused. deny_rules: [{method, path,
//     query}] refuse requests even when rules or access allow them (deny wins).
//     rules and access are exclusive; deny_rules combine with either (alone, they
//     narrow the default access: full).
//   - method: an HTTP method (case-insensitive) or "*"; path: a glob over the decoded
//     path, "*" within one segment, "**" across segments, a trailing "/**" also
//     matching the bare prefix; query: decoded parameter name → {glob: G} or
//     {any: [G...]} (a bare string is taken as glob), where "*" is any run of
//     characters. An allow rule needs each listed parameter present with every
//     value matching; a deny rule fires when any value matches; a query string that
//     does not parse is refused when some rule looks at parameters. Omitted fields
//     match anything; a rule with none is an error (method: "*" matches everything).
//   - Paths are matched decoded with "//" collapsed; requests with "." or ".."
//     segments, control characters or (unless allow_encoded_slash) %2F are refused
//     on such endpoints, because they can mean another resource to the server than
//     to the globs (see NormalizePath).
//   - Rules apply to requests the proxy sees: plain http:// requests through the
//     forward proxy, and requests inside tunnels it terminates. So an endpoint with
//     rules or deny_rules must either set tls: terminate (HTTPS: the proxy opens the tunnel with
//     the sandbox CA) or leave tls unset (plain HTTP; a CONNECT tunnel to it is then
//     refused, since it could not be inspected). tls: passthrough with rules is a
//     validation error.
//   - Rules decide per endpoint: another endpoint that names the same host and port
//     and admits the request still allows it. enforcement: audit logs a refused
//     request and lets it through, as for binaries.
//   - Other protocols (websocket, graphql, sql, json-rpc, mcp) are accepted for L4
//     only: rules on them, and the L7 fields of other protocols (command,
//     operation_type, operation_name, fields, params, persisted queries, request
//     signing, ...), are refused naming the field.
package policy

import (
	"fmt"
	"path"
	"slices"
	"strings"
)

// Landlock compatibility modes.
const (
	BestEffort      = "best_effort"
	HardRequirement = "hard_requirement"
)

// Enforcement modes.
const (
	Enforce = "enforce"
	Audit   = "audit"
)

// Access presets for HTTP requests the proxy can see (absolute-form HTTP and
// TLS-terminated requests). CONNECT tunnels are checked at L4 only.
const (
	AccessFull      = "full"
	AccessReadOnly  = "read-only"
	AccessReadWrite = "read-write"
)

// Policy is a validated sandbox policy.
type Policy struct {
	Version         int
	Filesystem      Filesystem
	Landlock        Landlock
	Process         Process
	NetworkPolicies map[string]*NetworkRule
}

// Filesystem lists the paths the agent may read or read and write (Landlock).
type Filesystem struct {
	IncludeWorkdir bool
	ReadOnly       []string
	ReadWrite      []string
}

// Landlock says whether confinement may start without Landlock.
type Landlock struct {
	Compatibility string // BestEffort (default) or HardRequirement
}

// Process is the identity the agent runs as.
type Process struct {
	RunAsUser  string
	RunAsGroup string
}

// NetworkRule is one named group of endpoints plus the binaries allowed to reach them.
type NetworkRule struct {
	Name      string
	Endpoints []Endpoint
	Binaries  []Binary
}

// Binary is one entry of a rule's binaries.
type Binary struct {
	// Path is a glob over /proc/PID/exe: * and ? within a path element, ** across
	// elements, [...] classes; e.g. /usr/bin/git, /usr/lib/node_modules/**.
	Path string
	// Ancestors lets the entry match the executable of any ancestor of the calling
	// process as well (default: the calling process's own executable only).
	Ancestors bool
}

// Endpoint is one allowed destination.
type Endpoint struct {
	Host        string
	Port        int   // legacy single port; Ports wins when non-empty
	Ports       []int // extra ports
	Protocol    string
	TLS         string
	Enforcement string // Enforce (default) or Audit
	Access      string // AccessFull (default), AccessReadOnly, AccessReadWrite
	AllowedIPs  []string
	// Rules (protocol: rest) list the requests the endpoint lets through; exclusive
	// with Access. DenyRules refuse requests that Rules or Access would allow.
	Rules     []L7Rule
	DenyRules []L7Rule
	// AllowEncodedSlash lets request paths hold %2F (see NormalizePath).
	AllowEncodedSlash bool
}

// EffectivePorts is Ports when set, else [Port].
func (e *Endpoint) EffectivePorts() []int {
	if len(e.Ports) > 0 {
		return e.Ports
	}
	if e.Port != 0 {
		return []int{e.Port}
	}
	return nil
}

// Default is the restrictive policy a sandbox gets when none is given: no network,
// the workdir read-write, the usual system directories read-only, Landlock best effort,
// the agent as the unprivileged sandbox user.
func Default() *Policy {
	return &Policy{
		Version: 1,
		Filesystem: Filesystem{
			IncludeWorkdir: true,
			ReadOnly:       []string{"/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc", "/opt", "/proc", "/dev/urandom", "/dev/zero", "/dev/random"},
			ReadWrite:      []string{"/tmp", "/dev/null", "/dev/tty", "/dev/pts", "/dev/ptmx", "/dev/shm"},
		},
		Landlock:        Landlock{Compatibility: BestEffort},
		Process:         Process{RunAsUser: "sandbox", RunAsGroup: "sandbox"},
		NetworkPolicies: map[string]*NetworkRule{},
	}
}

// LandlockHard reports whether confinement must fail when Landlock is unavailable.
func (p *Policy) LandlockHard() bool { return p.Landlock.Compatibility == HardRequirement }

// Validate checks a Policy built in code (Parse and FromProto already validate).
// Errors name the field path, e.g. network_policies.github.endpoints[0].host.
func (p *Policy) Validate() error {
	var errs fieldErrors
	p.validate(&errs, nil)
	return errs.err()
}

// validate appends every problem; lines maps paths to YAML lines when known.
func (p *Policy) validate(errs *fieldErrors, lines map[string]int) {
	add := func(path, format string, args ...any) {
		errs.add(path, lineOf(lines, path), fmt.Sprintf(format, args...))
	}
	if p.Version != 1 {
		add("version", "must be 1 (got %d)", p.Version)
	}
	for i, d := range p.Filesystem.ReadOnly {
		if msg := checkPath(d); msg != "" {
			add(fmt.Sprintf("filesystem_policy.read_only[%d]", i), "%s", msg)
		}
	}
	for i, d := range p.Filesystem.ReadWrite {
		f := fmt.Sprintf("filesystem_policy.read_write[%d]", i)
		if msg := checkPath(d); msg != "" {
			add(f, "%s", msg)
		} else if path.Clean(d) == "/" {
			add(f, "read-write access to / is too broad: list the directories the agent must write, e.g. /sandbox and /tmp")
		}
	}
	switch p.Landlock.Compatibility {
	case "", BestEffort, HardRequirement:
	default:
		add("landlock.compatibility", "must be %q or %q (got %q)", BestEffort, HardRequirement, p.Landlock.Compatibility)
	}
	if msg := checkAccount(p.Process.RunAsUser); msg != "" {
		add("process.run_as_user", "%s", msg)
	}
	if msg := checkAccount(p.Process.RunAsGroup); msg != "" {
		add("process.run_as_group", "%s", msg)
	}
	for _, name := range sortedKeys(p.NetworkPolicies) {
		r := p.NetworkPolicies[name]
		base := "network_policies." + name
		if !validRuleName(name) {
			add(base, "rule name must be 1-64 characters of letters, digits, '_', '-' or '.'")
		}
		if r == nil {
			add(base, "rule is empty: give it endpoints")
			continue
		}
		if len(r.Endpoints) == 0 {
			add(base+".endpoints", "a rule needs at least one endpoint")
		}
		for i := range r.Endpoints {
			validateEndpoint(&r.Endpoints[i], fmt.Sprintf("%s.endpoints[%d]", base, i), add)
		}
		for i, b := range r.Binaries {
			f := fmt.Sprintf("%s.binaries[%d]", base, i)
			if !strings.HasPrefix(b.Path, "/") {
				add(f, "binary must be an absolute path or glob, e.g. /usr/bin/git (got %q)", b.Path)
				continue
			}
			re, err := compileGlob(b.Path)
			if err != nil {
				add(f, "bad glob %q: %v", b.Path, err)
				continue
			}
			if b.Ancestors {
				for _, sh := range launchers {
					if re.MatchString(sh) {
						add(f+".ancestors", "%q matches %s, which starts other programs: with ancestors: true every program it starts would get this rule; name the program that opens the connection instead, or drop ancestors", b.Path, sh)
						break
					}
				}
			}
		}
	}
}

// launchers start arbitrary programs (shells, env, busybox, sudo-likes): an entry
// matching one of them with ancestors: true would hand its rule to everything.
var launchers = []string{"/bin/sh", "/usr/bin/sh", "/bin/bash", "/usr/bin/bash", "/bin/dash", "/usr/bin/dash",
	"/bin/ash", "/bin/zsh", "/usr/bin/zsh", "/usr/bin/fish", "/bin/busybox", "/usr/bin/busybox", "/usr/bin/env",
	"/usr/bin/nohup", "/usr/bin/setsid", "/usr/bin/timeout", "/usr/bin/xargs", "/usr/bin/su", "/usr/bin/sudo",
	"/sbin/init", "/usr/local/bin/openshell-sandbox", "/init"}

var knownProtocols = []string{"", "tcp", "rest", "websocket", "graphql", "sql", "json-rpc", "mcp"}

func validateEndpoint(e *Endpoint, base string, add func(path, format string, args ...any)) {
	if e.Host == "" {
		add(base+".host", "host is required, e.g. api.example.com or *.example.com")
	} else if msg := checkHost(e.Host); msg != "" {
		add(base+".host", "%s", msg)
	}
	if e.Port == 0 && len(e.Ports) == 0 {
		add(base+".port", "set port (or ports), e.g. port: 443")
	}
	if e.Port < 0 || e.Port > 65535 {
		add(base+".port", "port must be 1-65535 (got %d)", e.Port)
	}
	for i, p := range e.Ports {
		if p < 1 || p > 65535 {
			add(fmt.Sprintf("%s.ports[%d]", base, i), "port must be 1-65535 (got %d)", p)
		}
	}
	if !slices.Contains(knownProtocols, e.Protocol) {
		add(base+".protocol", "unknown protocol %q: use tcp or rest (also accepted: websocket, graphql, sql, json-rpc, mcp)", e.Protocol)
	}
	switch e.TLS {
	case "", "passthrough", "terminate":
	default:
		add(base+".tls", "must be passthrough or terminate (got %q)", e.TLS)
	}
	switch e.Enforcement {
	case "", Enforce, Audit:
	default:
		add(base+".enforcement", "must be enforce or audit (got %q)", e.Enforcement)
	}
	switch e.Access {
	case "", AccessFull, AccessReadOnly, AccessReadWrite:
	default:
		add(base+".access", "must be read-only, read-write or full (got %q)", e.Access)
	}
	for i, s := range e.AllowedIPs {
		if _, err := parsePrefix(s); err != nil {
			add(fmt.Sprintf("%s.allowed_ips[%d]", base, i), "%v", err)
		}
	}
	validateL7(e, base, add)
}

func checkPath(p string) string {
	switch {
	case p == "":
		return "path is empty"
	case !strings.HasPrefix(p, "/"):
		return fmt.Sprintf("path must be absolute (got %q)", p)
	case slices.Contains(strings.Split(p, "/"), ".."):
		return fmt.Sprintf("path must not contain '..' (got %q)", p)
	case strings.ContainsRune(p, 0):
		return "path contains a NUL byte"
	}
	return ""
}

func checkAccount(s string) string {
	if s == "" {
		return ""
	}
	if s == "root" || s == "0" {
		return "the agent must not run as root: use an unprivileged account such as sandbox"
	}
	for i, c := range s {
		ok := c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			(i > 0 && (c == '-' || c == '.' || (c >= '0' && c <= '9'))) || (c >= '0' && c <= '9')
		if !ok || i >= 32 {
			return fmt.Sprintf("%q is not a valid account name or numeric id", s)
		}
	}
	return ""
}

func validRuleName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c == '_' || c == '-' || c == '.' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
			return false
		}
	}
	return true
}

// checkHost validates an endpoint host: IP literal, DNS name, or "*." + DNS name.
func checkHost(h string) string {
	if _, err := parseIP(h); err == nil {
		return ""
	}
	name := h
	if strings.HasPrefix(h, "*.") {
		name = h[2:]
	}
	if strings.Contains(name, "*") {
		return `wildcard allowed only as the first label, e.g. "*.example.com"`
	}
	if len(name) > 253 {
		return "host name longer than 253 characters"
	}
	labels := strings.Split(strings.TrimSuffix(name, "."), ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 {
			return fmt.Sprintf("%q is not a valid host name (empty or over-long label)", h)
		}
		for _, c := range l {
			if !(c == '-' || c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
				return fmt.Sprintf("%q is not a valid host name (character %q)", h, c)
			}
		}
	}
	if strings.HasPrefix(h, "*.") && len(labels) < 2 {
		return fmt.Sprintf("wildcard %q is too broad: name at least two labels after *, e.g. \"*.example.com\"", h)
	}
	return ""
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// lineOf finds the YAML line of path, or of its nearest ancestor when the field itself
// is missing (e.g. a missing port is reported at its endpoint's line).
func lineOf(lines map[string]int, path string) int {
	for path != "" {
		if l, ok := lines[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return 0
}
