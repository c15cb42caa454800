package policy

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
)

// Compiled is a policy prepared for fast network decisions. It is immutable and safe
// for concurrent use; swap a whole *Compiled to change policy.
type Compiled struct {
	policy *Policy
	rules  []compiledRule // sorted by name for deterministic decisions
}

type compiledRule struct {
	name      string
	binaries  []compiledBinary
	endpoints []compiledEndpoint
}

type compiledBinary struct {
	path      string // the glob as written, for messages
	glob      *regexp.Regexp
	ancestors bool
}

type compiledEndpoint struct {
	index      int
	exact      string     // lower-case exact host, or ""
	suffix     string     // for "*.example.com": ".example.com"
	ip         netip.Addr // IP-literal host
	ports      []int
	audit      bool
	access     string
	terminate  bool
	allowedIPs []netip.Prefix
	l7         *l7Matcher // nil without rules and deny_rules
}

// Compile prepares a validated policy for matching.
func Compile(p *Policy) (*Compiled, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	c := &Compiled{policy: p}
	for _, name := range sortedKeys(p.NetworkPolicies) {
		r := p.NetworkPolicies[name]
		cr := compiledRule{name: name}
		for _, b := range r.Binaries {
			re, err := compileGlob(b.Path)
			if err != nil { // validated above
				return nil, err
			}
			cr.binaries = append(cr.binaries, compiledBinary{path: b.Path, glob: re, ancestors: b.Ancestors})
		}
		for i, e := range r.Endpoints {
			ce := compiledEndpoint{index: i, ports: e.EffectivePorts(), audit: e.Enforcement == Audit, access: e.Access, terminate: e.TLS == "terminate"}
			h := strings.ToLower(strings.TrimSuffix(e.Host, "."))
			if ip, err := parseIP(h); err == nil {
				ce.ip = ip
			} else if strings.HasPrefix(h, "*.") {
				ce.suffix = h[1:]
			} else {
				ce.exact = h
			}
			for _, s := range e.AllowedIPs {
				pfx, _ := parsePrefix(s) // validated above
				ce.allowedIPs = append(ce.allowedIPs, pfx)
			}
			l7, err := compileL7(&r.Endpoints[i], fmt.Sprintf("network_policies.%s.endpoints[%d]", name, i))
			if err != nil { // validated above
				return nil, err
			}
			ce.l7 = l7
			cr.endpoints = append(cr.endpoints, ce)
		}
		c.rules = append(c.rules, cr)
	}
	return c, nil
}

// MustCompile is Compile for policies known to be valid (Default, tests).
func MustCompile(p *Policy) *Compiled {
	c, err := Compile(p)
	if err != nil {
		panic(err)
	}
	return c
}

// Policy returns the policy this was compiled from (do not modify it).
func (c *Compiled) Policy() *Policy { return c.policy }

// Request is one connection (or HTTP request) to decide on.
type Request struct {
	Host string // as the client asked for it: name or IP literal
	Port int
	// Binaries is the calling executable first, then its ancestors' executables
	// (parent first). A rule's entry matches the first; entries with ancestors: true
	// match any of them. Empty when unknown.
	Binaries []string
	// Taint, parallel to Binaries, says why an entry must not match any binary rule
	// ("" = it may), e.g. "runs with LD_PRELOAD set": that process may run code
	// other than its executable's.
	Taint []string
	// Method is the HTTP method when the proxy can see it ("" for CONNECT tunnels).
	Method string
	// Path is the request path as sent (escaped, without the query; "" = "/") and
	// Query the raw query string, for endpoints with L7 rules.
	Path  string
	Query string
}

// Decision is the outcome for one Request.
type Decision struct {
	Allow  bool
	Audit  bool   // allowed only because the matching endpoint is in audit mode
	Rule   string // the network_policies key that decided, "" when none matched
	Reason string // human-readable, names what to change when refused
	// Explicit is true when the matching endpoint names the host or IP exactly (no
	// wildcard): the proxy then lets it reach internal addresses.
	Explicit bool
	// AllowedIPs, when non-empty, replaces the proxy's internal-address check: the
	// resolved address must be inside one of these prefixes.
	AllowedIPs []netip.Prefix
	// Endpoint is the path of the matching endpoint, e.g. network_policies.x.endpoints[0].
	Endpoint string
	// TLSTerminate is set when the endpoint says tls: terminate: the proxy opens
	// the TLS tunnel (with the sandbox CA) to inspect requests and their headers.
	TLSTerminate bool
	// L7 is set when the endpoint has REST rules: a tunnel to it must be terminated
	// (never spliced), since only the requests inside can be checked.
	L7 bool
}

// Decide is Evaluate for a single binary and no HTTP method.
func (c *Compiled) Decide(host string, port int, binary string) Decision {
	var bins []string
	if binary != "" {
		bins = []string{binary}
	}
	return c.Evaluate(Request{Host: host, Port: port, Binaries: bins})
}

// Evaluate decides a request. An endpoint matching host and port whose rule admits the
// binary (and, for HTTP, the method) allows; the first such endpoint (rules by name,
// endpoints in order) wins. Failing that, an audit-mode endpoint naming host and port
// allows with Audit set; otherwise the request is refused with a reason naming the
// host, port, binary and the rule to change.
func (c *Compiled) Evaluate(r Request) Decision { return c.evaluate(r, false) }

// Destination decides on host and port alone, as if every rule admitted the caller:
// the check a VM's runner repeats outside the guest, where the calling binary is
// not visible. Enforced binary mismatches were already refused inside the guest.
func (c *Compiled) Destination(host string, port int) Decision {
	return c.evaluate(Request{Host: host, Port: port}, true)
}

func (c *Compiled) evaluate(r Request, anyBinary bool) Decision {
	host := strings.ToLower(strings.TrimSuffix(r.Host, "."))
	hostIP, ipErr := parseIP(host)
	var near *Decision // the first host+port match that failed on binary, method or L7 rules
	var nearFix string // what to change for near
	for _, rule := range c.rules {
		// The binary check (globs over every executable of the chain) runs once per
		// rule, and only for a rule with an endpoint naming this host and port.
		binOK, binWhy, binDone := true, binaryMiss{}, anyBinary || len(rule.binaries) == 0
		for _, e := range rule.endpoints {
			if !slices.Contains(e.ports, r.Port) {
				continue
			}
			var explicit bool
			switch {
			case e.ip.IsValid():
				if ipErr != nil || e.ip != hostIP {
					continue
				}
				explicit = true
			case e.exact != "":
				if host != e.exact {
					continue
				}
				explicit = true
			default:
				// "*.example.com" matches exactly one extra label.
				if !strings.HasSuffix(host, e.suffix) {
					continue
				}
				first := strings.TrimSuffix(host, e.suffix)
				if first == "" || strings.Contains(first, ".") {
					continue
				}
			}
			if !binDone {
				binOK, binWhy = matchBinaries(rule.binaries, r)
				binDone = true
			}
			d := Decision{Rule: rule.name, Explicit: explicit, AllowedIPs: e.allowedIPs, TLSTerminate: e.terminate,
				Endpoint: fmt.Sprintf("network_policies.%s.endpoints[%d]", rule.name, e.index), L7: e.l7 != nil}
			why, fix := "", ""
			switch {
			case !binOK:
				why = fmt.Sprintf("binary %s is not listed in network_policies.%s.binaries", describeBinary(r.Binaries), rule.name)
				fix = "add the binary to that rule's binaries"
				switch binWhy.kind {
				case whyAncestor:
					why += " (" + binWhy.msg + ")"
					fix = "add the binary to that rule's binaries, or set ancestors: true on the entry naming its ancestor"
				case whyTaint:
					why = fmt.Sprintf("binary %s may not use network_policies.%s.binaries: %s", describeBinary(r.Binaries), rule.name, binWhy.msg)
					fix = "start the program without LD_PRELOAD, LD_AUDIT and LD_LIBRARY_PATH, or use a rule without binaries"
				}
			case !methodAllowed(e.access, r.Method):
				why = fmt.Sprintf("method %s is not allowed by access %q of %s", r.Method, e.access, d.Endpoint)
				fix = "change that endpoint's access"
			case e.l7 != nil && !anyBinary:
				// The VM runner's Destination check cannot see requests: the guest
				// proxy applied the rules already.
				why = e.l7.check(r)
				fix = "change that endpoint's rules or deny_rules"
			}
			if why == "" {
				d.Allow = true
				d.Reason = fmt.Sprintf("allowed by %s", d.Endpoint)
				return d
			}
			if near == nil {
				d.Audit = e.audit
				d.Allow = e.audit
				d.Reason = why
				nearFix = fix
				near = &d
			}
		}
	}
	if near != nil {
		if near.Audit {
			near.Reason = "audit: " + near.Reason + " (allowed because the endpoint's enforcement is audit)"
		} else {
			near.Reason = fmt.Sprintf("%s:%d refused: %s; %s or set enforcement: audit", r.Host, r.Port, near.Reason, nearFix)
		}
		return *near
	}
	return Decision{Reason: fmt.Sprintf("%s:%d refused for binary %s: no network_policies endpoint names this host and port; add one (e.g. host: %s, port: %d) to the sandbox policy",
		r.Host, r.Port, describeBinary(r.Binaries), r.Host, r.Port)}
}

func describeBinary(bins []string) string {
	if len(bins) == 0 {
		return "(unknown)"
	}
	return bins[0]
}

// binaryMiss says why an entry that would have matched a caller did not.
type binaryMiss struct {
	kind int // whyNone, whyAncestor, whyTaint
	msg  string
}

const (
	whyNone = iota
	whyAncestor
	whyTaint
)

// matchBinaries reports whether an entry admits the caller: its executable, or an
// ancestor's for entries with ancestors: true, never a tainted one. When none does,
// it says why an entry that would have matched did not (a taint wins: it is the
// more surprising refusal).
func matchBinaries(globs []compiledBinary, r Request) (bool, binaryMiss) {
	var miss binaryMiss
	for i, b := range r.Binaries {
		for _, g := range globs {
			if !g.glob.MatchString(b) {
				continue
			}
			switch {
			case i > 0 && !g.ancestors:
				if miss.kind == whyNone {
					miss = binaryMiss{whyAncestor, fmt.Sprintf("its ancestor %s matches %s, but that entry does not set ancestors: true", b, g.path)}
				}
			case i < len(r.Taint) && r.Taint[i] != "":
				if miss.kind != whyTaint {
					who := "it matches " + g.path
					if i > 0 {
						who = "its ancestor " + b + " matches " + g.path
					}
					miss = binaryMiss{whyTaint, fmt.Sprintf("%s, but %s, so it may run code other than its executable's", who, r.Taint[i])}
				}
			default:
				return true, binaryMiss{}
			}
		}
	}
	return false, miss
}

// methodAllowed applies an access preset; "" method (a tunnel) is decided at L4.
func methodAllowed(access, method string) bool {
	if method == "" {
		return true
	}
	switch access {
	case AccessReadOnly:
		return method == "GET" || method == "HEAD" || method == "OPTIONS"
	case AccessReadWrite:
		return method != "DELETE" && method != "CONNECT" && method != "TRACE"
	}
	return true
}

func parseIP(s string) (netip.Addr, error) {
	s = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, err
	}
	return a.Unmap().WithZone(""), nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP or CIDR: %w", s, err)
		}
		return p.Masked(), nil
	}
	a, err := parseIP(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP or CIDR", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}
