package policy

// REST L7 rules (protocol: rest): which HTTP requests an endpoint lets through, by
// method, path glob and query parameters. The egress proxy evaluates them on every
// request it can see; see the package doc for when that is.

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
)

// L7Rule is one REST rule: an entry of rules (under allow:) or of deny_rules.
type L7Rule struct {
	// Method is an HTTP method (compared case-insensitively) or "*"; "" means any.
	Method string
	// Path is a glob over the decoded request path: "*" and "?" stay within one
	// segment, "**" spans segments, a trailing "/**" also matches the bare prefix;
	// "" means any path.
	Path string
	// Query maps a decoded query-parameter name to the values it may (allow) or
	// must not (deny) have.
	Query map[string]QueryMatcher
}

// QueryMatcher matches the values of one query parameter: Glob, or any of Any.
// Value globs know "*" (any run of characters) and "?" (one character).
type QueryMatcher struct {
	Glob string
	Any  []string
}

// globs is every glob of the matcher.
func (q QueryMatcher) globs() []string {
	if q.Glob != "" {
		return append([]string{q.Glob}, q.Any...)
	}
	return q.Any
}

// HasL7 reports whether the endpoint carries REST rules the proxy must apply to
// each request.
func (e *Endpoint) HasL7() bool { return len(e.Rules) > 0 || len(e.DenyRules) > 0 }

// unsupportedRuleFields are L7 rule fields of the upstream schema for protocols other
// than rest (GraphQL, SQL, MCP): refused with a precise message, never ignored.
var unsupportedRuleFields = []string{"command", "operation_type", "operation_name", "fields", "params"}

// validateL7 checks rules, deny_rules and how the proxy gets to see the requests.
func validateL7(e *Endpoint, base string, add func(path, format string, args ...any)) {
	if !e.HasL7() {
		return
	}
	field := base + ".rules"
	if len(e.Rules) == 0 {
		field = base + ".deny_rules"
	}
	if e.Protocol != "rest" {
		if e.Protocol == "" || e.Protocol == "tcp" {
			add(field, "rules and deny_rules need protocol: rest (this endpoint's protocol is %q): add protocol: rest", e.Protocol)
		} else {
			add(field, "L7 rules for protocol %s are not supported: only protocol: rest takes rules and deny_rules (use access for a preset)", e.Protocol)
		}
	}
	if len(e.Rules) > 0 && e.Access != "" {
		add(base+".access", "access and rules are exclusive: keep rules (each allowed request listed) or access (a preset), not both; deny_rules combine with either")
	}
	if e.TLS == "passthrough" {
		add(base+".tls", "a tls: passthrough tunnel cannot be inspected, so its rules could never see a request: use tls: terminate for HTTPS, or leave tls unset for a plain http:// endpoint")
	}
	for i, r := range e.Rules {
		validateL7Rule(r, fmt.Sprintf("%s.rules[%d].allow", base, i), add)
	}
	for i, r := range e.DenyRules {
		validateL7Rule(r, fmt.Sprintf("%s.deny_rules[%d]", base, i), add)
	}
}

func validateL7Rule(r L7Rule, base string, add func(path, format string, args ...any)) {
	if r.Method == "" && r.Path == "" && len(r.Query) == 0 {
		// Most likely a missing or misplaced allow: block; a rule for every request
		// must say so.
		add(base, "the rule is empty: give method, path or query (method: \"*\" matches every request)")
	}
	if r.Method != "" && r.Method != "*" && !isToken(r.Method) {
		add(base+".method", "method must be an HTTP method such as GET, or * for any (got %q)", r.Method)
	}
	if r.Path != "" {
		if msg := checkPathGlob(r.Path); msg != "" {
			add(base+".path", "%s", msg)
		}
	}
	for _, name := range sortedKeys(r.Query) {
		q := r.Query[name]
		f := base + ".query." + name
		switch {
		case name == "":
			add(base+".query", "a query parameter name is empty")
		case q.Glob == "" && len(q.Any) == 0:
			add(f, "give glob (one value glob) or any (a list of value globs)")
		case q.Glob != "" && len(q.Any) > 0:
			add(f, "glob and any are exclusive: put every accepted value in any")
		}
		for i, g := range q.Any {
			if g == "" {
				add(fmt.Sprintf("%s.any[%d]", f, i), "value glob is empty (use \"*\" for any value)")
			}
		}
	}
}

// checkPathGlob validates a rule's path glob.
func checkPathGlob(g string) string {
	if g == "*" || g == "**" {
		return ""
	}
	switch {
	case !strings.HasPrefix(g, "/"):
		return fmt.Sprintf("path must start with / (or be ** for any path), got %q", g)
	case strings.ContainsAny(g, "?#"):
		// A "?" here is almost always a query string written into the path: as a
		// one-character wildcard it would make a deny rule silently never match.
		return fmt.Sprintf("path must not contain ? or #: match query parameters with query (got %q)", g)
	case strings.ContainsRune(g, 0):
		return "path contains a NUL byte"
	}
	for _, seg := range strings.Split(g, "/") {
		if seg == "." || seg == ".." {
			return fmt.Sprintf("path must not contain . or .. segments: requests with them are refused before matching (got %q)", g)
		}
	}
	if _, err := compileGlob(g); err != nil {
		return fmt.Sprintf("bad path glob %q: %v", g, err)
	}
	return ""
}

// isToken reports whether s is an HTTP token (RFC 9110 tchar), as methods are.
func isToken(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// l7Matcher is an endpoint's compiled rules.
type l7Matcher struct {
	endpoint     string // network_policies.x.endpoints[i], for reasons
	allow        []compiledL7
	deny         []compiledL7
	hasAllow     bool // rules given: a request no allow rule matches is refused
	needQuery    bool // some rule looks at query parameters
	encodedSlash bool
	terminate    bool
}

type compiledL7 struct {
	method string         // upper case; "" = any
	path   *regexp.Regexp // nil = any
	query  []queryMatch
}

type queryMatch struct {
	name  string
	globs []*regexp.Regexp
}

func compileL7(e *Endpoint, endpoint string) (*l7Matcher, error) {
	if !e.HasL7() {
		return nil, nil
	}
	m := &l7Matcher{endpoint: endpoint, hasAllow: len(e.Rules) > 0, encodedSlash: e.AllowEncodedSlash, terminate: e.TLS == "terminate"}
	for _, set := range []struct {
		in  []L7Rule
		out *[]compiledL7
	}{{e.Rules, &m.allow}, {e.DenyRules, &m.deny}} {
		for _, r := range set.in {
			c, err := compileL7Rule(r)
			if err != nil {
				return nil, err
			}
			if len(c.query) > 0 {
				m.needQuery = true
			}
			*set.out = append(*set.out, c)
		}
	}
	return m, nil
}

func compileL7Rule(r L7Rule) (compiledL7, error) {
	c := compiledL7{method: strings.ToUpper(r.Method)}
	if c.method == "*" {
		c.method = ""
	}
	if r.Path != "" && r.Path != "**" && r.Path != "*" {
		re, err := compilePathGlob(r.Path)
		if err != nil {
			return c, err
		}
		c.path = re
	}
	for _, name := range sortedKeys(r.Query) {
		qm := queryMatch{name: name}
		for _, g := range r.Query[name].globs() {
			qm.globs = append(qm.globs, compileValueGlob(g))
		}
		c.query = append(c.query, qm)
	}
	return c, nil
}

// compilePathGlob is compileGlob, plus: a trailing "/**" also matches the prefix
// itself, so /repos/** covers /repos as well as everything below it.
func compilePathGlob(g string) (*regexp.Regexp, error) {
	if prefix, ok := strings.CutSuffix(g, "/**"); ok {
		re, err := compileGlob(prefix)
		if err != nil {
			return nil, err
		}
		return regexp.Compile(strings.TrimSuffix(re.String(), "$") + "(?:/.*)?$")
	}
	return compileGlob(g)
}

// compileValueGlob compiles a query-value glob: "*" any run, "?" one character,
// "\" escapes; values are not paths, so "*" crosses "/".
func compileValueGlob(g string) *regexp.Regexp {
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(g); i++ {
		switch c := g[i]; c {
		case '*':
			b.WriteString("(?s:.*)")
		case '?':
			b.WriteString("(?s:.)")
		case '\\':
			if i+1 < len(g) {
				i++
				b.WriteString(regexp.QuoteMeta(string(g[i])))
			} else {
				b.WriteString(`\\`)
			}
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}

// ErrEncodedSlash is returned by NormalizePath for a path holding %2F.
var ErrEncodedSlash = errors.New("the path holds an encoded slash (%2F), which this endpoint does not accept: set allow_encoded_slash: true on it if the API needs them")

// NormalizePath turns a request path as sent (escaped, e.g. "/a%20b") into the
// decoded path rules match: percent-escapes decoded, runs of "/" collapsed. It
// refuses paths that could mean something else to the server than to the rules:
// "." and ".." segments (also encoded, also between backslashes), NUL and other
// control characters, and — unless allowEncodedSlash — an encoded slash. An empty
// path is "/".
//
// Why refuse %2F: rules match segments, but servers differ on %2F. A proxy that
// decodes it to "/" lets /files/a%2F..%2Fadmin climb out of /files/**, one that keeps
// it lets /admin%2Fusers dodge a deny rule on /admin/**, and some servers decode it
// after routing. With allowEncodedSlash the %2F stays encoded inside its segment
// (as "%2F"), so "*" matches a whole "group%2Fproject" id and nothing climbs.
func NormalizePath(escaped string, allowEncodedSlash bool) (string, error) {
	if escaped == "" {
		return "/", nil
	}
	if !strings.HasPrefix(escaped, "/") {
		return "", fmt.Errorf("request target %q is not an absolute path", truncate(escaped))
	}
	// Decode segment by segment so that an allowed %2F stays inside its segment.
	raw := strings.Split(escaped, "/")
	segs := make([]string, 0, len(raw))
	for _, s := range raw[1:] {
		if s == "" {
			continue // "//" collapses, as most servers do
		}
		if indexEncodedSlash(s) >= 0 {
			if !allowEncodedSlash {
				return "", ErrEncodedSlash
			}
			// Keep %2F encoded (and only it): decode the pieces around it.
			parts := splitEncodedSlash(s)
			for i, p := range parts {
				d, err := url.PathUnescape(p)
				if err != nil {
					return "", fmt.Errorf("bad escape in path: %w", err)
				}
				parts[i] = d
			}
			d := strings.Join(parts, "%2F")
			if err := checkSegment(d, parts); err != nil {
				return "", err
			}
			segs = append(segs, d)
			continue
		}
		d, err := url.PathUnescape(s)
		if err != nil {
			return "", fmt.Errorf("bad escape in path: %w", err)
		}
		if err := checkSegment(d, []string{d}); err != nil {
			return "", err
		}
		segs = append(segs, d)
	}
	out := "/" + strings.Join(segs, "/")
	if strings.HasSuffix(escaped, "/") && len(segs) > 0 {
		out += "/"
	}
	return out, nil
}

// checkSegment refuses control characters and dot segments in a decoded segment
// (pieces are the parts between allowed %2F, each a segment to some server).
func checkSegment(d string, pieces []string) error {
	for _, c := range []byte(d) {
		if c < 0x20 || c == 0x7f {
			return errors.New("the path holds a control character")
		}
	}
	for _, p := range pieces {
		// A backslash is a separator to some servers: check its pieces too.
		for _, q := range strings.Split(p, `\`) {
			if q == "." || q == ".." {
				return errors.New("the path holds a . or .. segment: send the normalised path")
			}
		}
	}
	return nil
}

// indexEncodedSlash finds "%2F" or "%2f" (byte-wise: paths need not be UTF-8).
func indexEncodedSlash(s string) int {
	for i := 0; i+2 < len(s); i++ {
		if s[i] == '%' && s[i+1] == '2' && (s[i+2] == 'F' || s[i+2] == 'f') {
			return i
		}
	}
	return -1
}

// splitEncodedSlash splits s around every %2F / %2f.
func splitEncodedSlash(s string) []string {
	var out []string
	for {
		i := indexEncodedSlash(s)
		if i < 0 {
			return append(out, s)
		}
		out = append(out, s[:i])
		s = s[i+3:]
	}
}

// l7Request is a request prepared for matching.
type l7Request struct {
	method string // upper case
	path   string // NormalizePath output
	query  url.Values
}

// check returns "" when the request passes the endpoint's rules, else why not.
// method "" is a tunnel: it passes only when the endpoint terminates TLS (each
// request inside is then checked on its own).
func (m *l7Matcher) check(r Request) string {
	if r.Method == "" {
		if m.terminate {
			return ""
		}
		return fmt.Sprintf("%s has L7 rules, and a CONNECT tunnel without tls: terminate cannot be inspected: set tls: terminate on it (HTTPS) or send plain http:// requests through the proxy", m.endpoint)
	}
	req := l7Request{method: strings.ToUpper(r.Method)}
	p, err := NormalizePath(r.Path, m.encodedSlash)
	if err != nil {
		return fmt.Sprintf("%s %s refused by the L7 rules of %s: %v", req.method, truncate(r.Path), m.endpoint, err)
	}
	req.path = p
	if m.needQuery {
		q, err := url.ParseQuery(r.Query)
		if err != nil {
			// Fail closed: a query we cannot read cannot be held against deny rules.
			return fmt.Sprintf("%s %s refused by the L7 rules of %s: the query string cannot be parsed: %v", req.method, p, m.endpoint, err)
		}
		req.query = q
	}
	for i, d := range m.deny {
		if d.matches(req, true) {
			return fmt.Sprintf("%s %s matches deny_rules[%d] of %s", req.method, p, i, m.endpoint)
		}
	}
	if !m.hasAllow {
		return ""
	}
	for _, a := range m.allow {
		if a.matches(req, false) {
			return ""
		}
	}
	return fmt.Sprintf("%s %s is not allowed by any rules entry of %s", req.method, p, m.endpoint)
}

// matches applies one rule. Query parameters differ by direction: an allow rule
// needs the parameter present with every value matching (so ?ref=main&ref=x cannot
// slip x past it), a deny rule fires when any value matches.
func (c *compiledL7) matches(r l7Request, deny bool) bool {
	if c.method != "" && c.method != r.method {
		return false
	}
	if c.path != nil && !c.path.MatchString(r.path) {
		return false
	}
	for _, q := range c.query {
		vals := r.query[q.name]
		if len(vals) == 0 {
			return false
		}
		matchOne := func(v string) bool {
			return slices.ContainsFunc(q.globs, func(g *regexp.Regexp) bool { return g.MatchString(v) })
		}
		if deny {
			if !slices.ContainsFunc(vals, matchOne) {
				return false
			}
		} else {
			for _, v := range vals {
				if !matchOne(v) {
					return false
				}
			}
		}
	}
	return true
}
