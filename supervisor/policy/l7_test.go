package policy

import (
	"errors"
	"strings"
	"testing"

	"github.com/openshell/openshell/api/sandboxv1"
)

const l7Sample = `version: 1
network_policies:
  gh:
    endpoints:
      - host: api.github.com
        port: 443
        protocol: rest
        tls: terminate
        rules:
          - allow: {method: GET, path: /repos/**}
          - allow:
              method: POST
              path: /repos/*/*/issues
          - allow:
              method: GET
              path: /search/*
              query:
                q: "*"
                per_page: {any: ["10", "100"]}
                sort: {glob: "stars"}
        deny_rules:
          - {method: "*", path: /repos/*/secret/**}
          - method: GET
            path: /repos/**
            query: {ref: {any: ["admin*"]}}
    binaries: [{path: /usr/bin/curl}]
  plain:
    endpoints:
      - host: api.example.com
        port: 8080
        protocol: rest
        enforcement: audit
        rules:
          - allow: {method: GET, path: "/v1/*/items"}
  gitlab:
    endpoints:
      - host: gitlab.example.com
        port: 80
        protocol: rest
        allow_encoded_slash: true
        access: read-only
        deny_rules:
          - {path: "/api/v4/projects/secret%2F*/**"}
`

func TestParseL7(t *testing.T) {
	p := MustParse(t, l7Sample)
	e := p.NetworkPolicies["gh"].Endpoints[0]
	if len(e.Rules) != 3 || len(e.DenyRules) != 2 || e.Rules[1].Path != "/repos/*/*/issues" ||
		e.Rules[2].Query["q"].Glob != "*" || len(e.Rules[2].Query["per_page"].Any) != 2 || e.DenyRules[0].Method != "*" {
		t.Fatalf("rules parsed wrong: %+v", e)
	}
	if g := p.NetworkPolicies["gitlab"].Endpoints[0]; !g.AllowEncodedSlash || g.Access != AccessReadOnly || len(g.DenyRules) != 1 {
		t.Fatalf("gitlab endpoint parsed wrong: %+v", g)
	}
	// Both round trips keep the rules.
	m := p.ToProto()
	if a := m.GetNetworkPolicies()["gh"].GetEndpoints()[0].GetRules()[2].GetAllow(); a.GetQuery()["per_page"].GetAny()[1] != "100" {
		t.Fatalf("proto lost the query matcher: %v", a)
	}
	assertRoundTrips(t, m)
}

func TestL7ParseErrors(t *testing.T) {
	const head = "version: 1\nnetwork_policies:\n  x:\n    endpoints:\n      - host: a.example.com\n        port: 443\n"
	cases := []struct {
		name, doc, want string
	}{
		{"no protocol", head + "        tls: terminate\n        rules:\n          - allow: {method: GET}\n",
			`network_policies.x.endpoints[0].rules (line 8): rules and deny_rules need protocol: rest`},
		{"deny without protocol", head + "        deny_rules:\n          - {method: DELETE}\n",
			`network_policies.x.endpoints[0].deny_rules (line 7): rules and deny_rules need protocol: rest`},
		{"graphql rules", head + "        protocol: graphql\n        tls: terminate\n        rules:\n          - allow: {method: POST}\n",
			`network_policies.x.endpoints[0].rules (line 9): L7 rules for protocol graphql are not supported`},
		{"access and rules", head + "        protocol: rest\n        tls: terminate\n        access: read-only\n        rules:\n          - allow: {method: GET}\n",
			`network_policies.x.endpoints[0].access (line 9): access and rules are exclusive`},
		{"passthrough", head + "        protocol: rest\n        tls: passthrough\n        rules:\n          - allow: {method: GET}\n",
			`network_policies.x.endpoints[0].tls (line 8): a tls: passthrough tunnel cannot be inspected`},
		{"bad method", head + "        protocol: rest\n        rules:\n          - allow: {method: \"GE T\"}\n",
			`network_policies.x.endpoints[0].rules[0].allow.method (line 9): method must be an HTTP method`},
		{"relative path", head + "        protocol: rest\n        rules:\n          - allow:\n              path: repos/*\n",
			`network_policies.x.endpoints[0].rules[0].allow.path (line 10): path must start with /`},
		{"query in path", head + "        protocol: rest\n        deny_rules:\n          - path: /search?q=x\n",
			`network_policies.x.endpoints[0].deny_rules[0].path (line 9): path must not contain ? or #`},
		{"dotdot path", head + "        protocol: rest\n        rules:\n          - allow: {path: /a/../b}\n",
			`network_policies.x.endpoints[0].rules[0].allow.path (line 9): path must not contain . or .. segments`},
		{"bad class", head + "        protocol: rest\n        rules:\n          - allow: {path: \"/a/[b\"}\n",
			`network_policies.x.endpoints[0].rules[0].allow.path (line 9): bad path glob`},
		{"empty allow", head + "        protocol: rest\n        rules:\n          - allow:\n",
			`network_policies.x.endpoints[0].rules[0].allow (line 9): the rule is empty`},
		{"missing allow", head + "        protocol: rest\n        rules:\n          - {}\n",
			`network_policies.x.endpoints[0].rules[0].allow (line 9): the rule is empty`},
		{"method outside allow", head + "        protocol: rest\n        rules:\n          - method: GET\n",
			`network_policies.x.endpoints[0].rules[0].method (line 9): unknown field "method"`},
		{"empty deny", head + "        protocol: rest\n        deny_rules:\n          - {}\n",
			`network_policies.x.endpoints[0].deny_rules[0] (line 9): the rule is empty`},
		{"query glob and any", head + "        protocol: rest\n        rules:\n          - allow:\n              query:\n                a: {glob: x, any: [y]}\n",
			`network_policies.x.endpoints[0].rules[0].allow.query.a (line 11): glob and any are exclusive`},
		{"query empty matcher", head + "        protocol: rest\n        rules:\n          - allow:\n              query:\n                a: {}\n",
			`network_policies.x.endpoints[0].rules[0].allow.query.a (line 11): give glob`},
		{"query empty any entry", head + "        protocol: rest\n        rules:\n          - allow:\n              query:\n                a:\n                  any: [x, \"\"]\n",
			`network_policies.x.endpoints[0].rules[0].allow.query.a.any[1] (line 12): value glob is empty`},
		{"query not mapping", head + "        protocol: rest\n        rules:\n          - allow:\n              query: [a]\n",
			`network_policies.x.endpoints[0].rules[0].allow.query (line 10): must be a mapping of query parameter name`},
		{"query unknown key", head + "        protocol: rest\n        rules:\n          - allow:\n              query:\n                a: {regex: x}\n",
			`network_policies.x.endpoints[0].rules[0].allow.query.a.regex (line 11): unknown field "regex"`},
		{"graphql field", head + "        protocol: rest\n        rules:\n          - allow:\n              operation_type: query\n",
			`network_policies.x.endpoints[0].rules[0].allow.operation_type (line 10): operation_type is not supported: openshell enforces the L7 rules of protocol: rest only`},
		{"sql command", head + "        protocol: rest\n        deny_rules:\n          - command: DROP\n",
			`network_policies.x.endpoints[0].deny_rules[0].command (line 9): command is not supported`},
		{"mcp params", head + "        protocol: rest\n        rules:\n          - allow:\n              params: {name: x}\n",
			`params is not supported`},
		{"persisted queries", head + "        persisted_queries: allow_registered\n",
			`network_policies.x.endpoints[0].persisted_queries (line 7): persisted_queries is not supported by this openshell version`},
		{"signing", head + "        credential_signing: sigv4\n",
			`network_policies.x.endpoints[0].credential_signing (line 7): credential_signing is not supported`},
		{"encoded slash type", head + "        allow_encoded_slash: maybe\n",
			`network_policies.x.endpoints[0].allow_encoded_slash (line 7): must be true or false`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			if err == nil {
				t.Fatalf("want error containing %q, got none", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("not a *ValidationError: %T", err)
			}
		})
	}
	// Valid combinations: plain-HTTP rules (tls unset), deny_rules with access.
	for _, ok := range []string{
		head + "        protocol: rest\n        rules:\n          - allow: {method: GET}\n",
		head + "        protocol: rest\n        access: read-write\n        deny_rules:\n          - {method: DELETE}\n",
		head + "        protocol: rest\n        tls: terminate\n        rules:\n          - allow: {method: \"*\", path: \"**\"}\n",
		head + "        rules: []\n", // an empty list is no rules at all
	} {
		if _, err := Parse([]byte(ok)); err != nil {
			t.Errorf("valid policy refused: %v\n%s", err, ok)
		}
	}
}

func TestL7FromProtoRejects(t *testing.T) {
	m := MustParse(t, l7Sample).ToProto()
	gh := m.NetworkPolicies["gh"].Endpoints[0]
	gh.Rules[0].Allow.Fields = []string{"repository"}
	gh.Rules = append(gh.Rules, &sandboxv1.L7Rule{})
	gh.DenyRules[0].Command = "DROP"
	gh.PersistedQueries = "allow_registered"
	gh.Access = "full"
	_, err := FromProto(m)
	for _, want := range []string{
		"network_policies.gh.endpoints[0].rules[0].allow.fields: fields is not supported",
		"network_policies.gh.endpoints[0].rules[3].allow: is required",
		"network_policies.gh.endpoints[0].deny_rules[0].command: command is not supported",
		"network_policies.gh.endpoints[0].persisted_queries: persisted_queries is not supported",
		"network_policies.gh.endpoints[0].access: access and rules are exclusive",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not contain %q", err, want)
		}
	}
}

func TestNormalizePath(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		slash    bool
		err      string
	}{
		{"", "/", false, ""},
		{"/", "/", false, ""},
		{"/a/b", "/a/b", false, ""},
		{"/a%20b/c", "/a b/c", false, ""},
		{"//a///b/", "/a/b/", false, ""},
		{"/a/%7Euser", "/a/~user", false, ""},
		{"/a/../b", "", false, ". or .."},
		{"/a/./b", "", false, ". or .."},
		{"/a/%2e%2E/b", "", false, ". or .."},
		{"/a/..%5Cb", "", false, ". or .."},
		{"/a/b%2Fc", "", false, "encoded slash"},
		{"/a/b%2fc", "", false, "encoded slash"},
		{"/a/b%2Fc", "/a/b%2Fc", true, ""},
		{"/a/b%2fc%20d", "/a/b%2Fc d", true, ""},
		{"/a/x%2F..%2Fadmin", "", true, ". or .."},
		{"/a/%00", "", false, "control character"},
		{"/a/%zz", "", false, "bad escape"},
		{"*", "", false, "not an absolute path"},
	} {
		got, err := NormalizePath(tc.in, tc.slash)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("NormalizePath(%q, %v) = %q, %v; want error %q", tc.in, tc.slash, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("NormalizePath(%q, %v) = %q, %v; want %q", tc.in, tc.slash, got, err, tc.want)
		}
	}
	if _, err := NormalizePath("/a%2Fb", false); !errors.Is(err, ErrEncodedSlash) {
		t.Fatalf("want ErrEncodedSlash, got %v", err)
	}
}

func TestL7Evaluate(t *testing.T) {
	c := MustCompile(MustParse(t, l7Sample))
	curl := []string{"/usr/bin/curl"}
	gh := func(method, path, query string) Request {
		return Request{Host: "api.github.com", Port: 443, Binaries: curl, Method: method, Path: path, Query: query}
	}
	cases := []struct {
		name   string
		req    Request
		allow  bool
		audit  bool
		reason string
	}{
		{"GET under **", gh("GET", "/repos/o/r/contents/a/b.txt", ""), true, false, "allowed by network_policies.gh.endpoints[0]"},
		{"trailing /** covers the prefix", gh("GET", "/repos", ""), true, false, ""},
		{"method case-insensitive", gh("get", "/repos/o/r", ""), true, false, ""},
		{"POST one-segment globs", gh("POST", "/repos/o/r/issues", ""), true, false, ""},
		{"* does not cross segments", gh("POST", "/repos/o/r/x/issues", ""), false, false, "POST /repos/o/r/x/issues is not allowed by any rules entry of network_policies.gh.endpoints[0]"},
		{"unlisted method", gh("DELETE", "/repos/o/r", ""), false, false, "DELETE /repos/o/r is not allowed by any rules entry"},
		{"deny wins over allow", gh("GET", "/repos/o/secret/x", ""), false, false, "GET /repos/o/secret/x matches deny_rules[0] of network_policies.gh.endpoints[0]"},
		{"deny method *", gh("POST", "/repos/o/secret", ""), false, false, "matches deny_rules[0]"},
		{"deny on a query value", gh("GET", "/repos/o/r", "ref=main&ref=admin-x"), false, false, "matches deny_rules[1]"},
		{"deny query other value", gh("GET", "/repos/o/r", "ref=main"), true, false, ""},
		{"decoded path", gh("GET", "/repos/o/%73ecret/x", ""), false, false, "GET /repos/o/secret/x matches deny_rules[0]"},
		{"collapsed slashes", gh("GET", "//repos//o/secret/x", ""), false, false, "deny_rules[0]"},
		{"dot segments refused", gh("GET", "/repos/o/r/../../admin", ""), false, false, ". or .. segment"},
		{"encoded slash refused", gh("GET", "/repos/o%2Fsecret/x", ""), false, false, "encoded slash"},
		{"query all listed", gh("GET", "/search/code", "q=foo&per_page=100&sort=stars"), true, false, ""},
		{"query decoded", gh("GET", "/search/code", "q=a+b%2Fc&per_page=10&sort=%73tars"), true, false, ""},
		{"query any-of miss", gh("GET", "/search/code", "q=foo&per_page=50&sort=stars"), false, false, "not allowed by any rules entry"},
		{"query missing param", gh("GET", "/search/code", "q=foo&per_page=10"), false, false, "not allowed"},
		{"query every value must match", gh("GET", "/search/code", "q=foo&per_page=10&per_page=1000&sort=stars"), false, false, "not allowed"},
		{"query extra params ignored", gh("GET", "/search/code", "q=foo&per_page=10&sort=stars&page=2"), true, false, ""},
		{"query unparseable", gh("GET", "/search/code", "q=%zz"), false, false, "query string cannot be parsed"},
		{"tunnel terminated", gh("", "", ""), true, false, ""},
		{"wrong binary before rules", Request{Host: "api.github.com", Port: 443, Binaries: []string{"/usr/bin/wget"}, Method: "GET", Path: "/repos"}, false, false, "add the binary to that rule's binaries"},
		{"audit endpoint", Request{Host: "api.example.com", Port: 8080, Method: "DELETE", Path: "/v1/a/items"}, true, true, "audit: DELETE /v1/a/items is not allowed"},
		{"plain rules allow", Request{Host: "api.example.com", Port: 8080, Method: "GET", Path: "/v1/a/items"}, true, false, ""},
		{"plain rules tunnel", Request{Host: "api.example.com", Port: 8080}, true, true, "CONNECT tunnel without tls: terminate cannot be inspected"},
		{"access then deny", Request{Host: "gitlab.example.com", Port: 80, Method: "GET", Path: "/api/v4/projects/secret%2Fproj/issues"}, false, false, "matches deny_rules[0] of network_policies.gitlab.endpoints[0]"},
		{"encoded slash allowed", Request{Host: "gitlab.example.com", Port: 80, Method: "GET", Path: "/api/v4/projects/group%2Fproj/issues"}, true, false, ""},
		{"access preset before rules", Request{Host: "gitlab.example.com", Port: 80, Method: "POST", Path: "/api/v4/projects"}, false, false, "change that endpoint's access"},
		{"deny-only tunnel refused", Request{Host: "gitlab.example.com", Port: 80}, false, false, "cannot be inspected"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := c.Evaluate(tc.req)
			if d.Allow != tc.allow || d.Audit != tc.audit || !d.L7 {
				t.Fatalf("got %+v", d)
			}
			if !strings.Contains(d.Reason, tc.reason) {
				t.Fatalf("reason %q does not contain %q", d.Reason, tc.reason)
			}
			if !tc.allow && !strings.Contains(d.Reason, "or set enforcement: audit") {
				t.Fatalf("refusal %q does not name the fix", d.Reason)
			}
		})
	}
	// The VM runner's host-and-port check cannot see requests and must not refuse
	// a plain-HTTP rules endpoint on their account.
	if d := c.Destination("gitlab.example.com", 80); !d.Allow {
		t.Fatalf("Destination refused an L7 endpoint: %+v", d)
	}
}

// TestL7AnotherEndpointAllows pins the documented union: rules decide per endpoint.
func TestL7AnotherEndpointAllows(t *testing.T) {
	c := MustCompile(MustParse(t, `version: 1
network_policies:
  a:
    endpoints:
      - {host: h.example.com, port: 80, protocol: rest, rules: [{allow: {method: GET}}]}
  b:
    endpoints:
      - {host: h.example.com, port: 80}
    binaries: [{path: /usr/bin/git}]
`))
	if d := c.Evaluate(Request{Host: "h.example.com", Port: 80, Binaries: []string{"/usr/bin/git"}, Method: "POST", Path: "/x"}); !d.Allow || d.Rule != "b" {
		t.Fatalf("git POST: %+v", d)
	}
	if d := c.Evaluate(Request{Host: "h.example.com", Port: 80, Binaries: []string{"/usr/bin/curl"}, Method: "POST", Path: "/x"}); d.Allow || d.Rule != "a" {
		t.Fatalf("curl POST: %+v", d)
	}
}

func TestPathGlob(t *testing.T) {
	for _, tc := range []struct {
		glob, path string
		want       bool
	}{
		{"/repos/*", "/repos/a", true},
		{"/repos/*", "/repos/a/b", false},
		{"/repos/*", "/repos", false},
		{"/repos/**", "/repos", true},
		{"/repos/**", "/repos/", true},
		{"/repos/**", "/repos/a/b/c", true},
		{"/repos/**", "/reposx", false},
		{"/a/**/z", "/a/b/c/z", true},
		{"/a/**/z", "/a/z", false},
		{"/v*/items", "/v2/items", true},
		{"/files/*.json", "/files/x.json", true},
		{"/files/*.json", "/files/d/x.json", false},
	} {
		re, err := compilePathGlob(tc.glob)
		if err != nil {
			t.Fatalf("%s: %v", tc.glob, err)
		}
		if got := re.MatchString(tc.path); got != tc.want {
			t.Errorf("%s ~ %s = %v, want %v", tc.glob, tc.path, got, tc.want)
		}
	}
	for _, tc := range []struct {
		glob, val string
		want      bool
	}{
		{"*", "", true},
		{"*", "a/b c", true},
		{"v?", "v1", true},
		{"v?", "v10", false},
		{`a\*`, "a*", true},
		{`a\*`, "ab", false},
		{"x.y", "xzy", false},
	} {
		if got := compileValueGlob(tc.glob).MatchString(tc.val); got != tc.want {
			t.Errorf("value glob %q ~ %q = %v, want %v", tc.glob, tc.val, got, tc.want)
		}
	}
}

func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{"", "/", "/a/b", "//a/./b", "/a/%2e%2E/b", "/a%2Fb", "/x%2F..%2Fy", "/%00", "/a\\..\\b", "/a%zz", "*"} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, in string, slash bool) {
		out, err := NormalizePath(in, slash)
		if err != nil {
			return
		}
		if !strings.HasPrefix(out, "/") || strings.Contains(out, "//") {
			t.Fatalf("NormalizePath(%q) = %q: not a clean absolute path", in, out)
		}
		for _, seg := range strings.FieldsFunc(out, func(r rune) bool { return r == '/' || r == '\\' }) {
			if seg == "." || seg == ".." {
				t.Fatalf("NormalizePath(%q) = %q keeps a dot segment", in, out)
			}
		}
		for _, c := range []byte(out) {
			if c < 0x20 || c == 0x7f {
				t.Fatalf("NormalizePath(%q) = %q keeps a control character", in, out)
			}
		}
		if !slash && indexEncodedSlash(in) >= 0 {
			t.Fatalf("NormalizePath(%q) accepted an encoded slash", in)
		}
	})
}

// FuzzL7Evaluate checks, for arbitrary requests against l7Sample, that deny rules
// always win: a request matching a deny rule is never allowed.
func FuzzL7Evaluate(f *testing.F) {
	c := MustCompile(MustParse(f, l7Sample))
	f.Add("GET", "/repos/a/secret/x", "")
	f.Add("GET", "/repos/a/b", "ref=admin")
	f.Add("POST", "/repos/a/b/issues", "")
	f.Add("GET", "/search/x", "q=1&per_page=10&sort=stars")
	f.Add("get", "//repos/%61/secret", "ref=x&ref=adminz")
	f.Fuzz(func(t *testing.T, method, path, query string) {
		d := c.Evaluate(Request{Host: "api.github.com", Port: 443, Binaries: []string{"/usr/bin/curl"}, Method: method, Path: path, Query: query})
		if !d.Allow && d.Reason == "" {
			t.Fatal("refusal without a reason")
		}
		if !d.Allow || method == "" {
			return
		}
		norm, err := NormalizePath(path, false)
		if err != nil {
			t.Fatalf("allowed a path NormalizePath refuses: %q (%v)", path, err)
		}
		segs := strings.Split(norm, "/")
		if len(segs) >= 4 && segs[1] == "repos" && segs[3] == "secret" {
			t.Fatalf("allowed %s %q despite deny_rules[0]", method, path)
		}
	})
}
