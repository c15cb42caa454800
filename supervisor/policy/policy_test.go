package policy

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/openshell/openshell/api/sandboxv1"
)

const sample = `version: 1
filesystem_policy:
  include_workdir: true
  read_only: [/usr, /lib, /etc]
  read_write: [/sandbox, /tmp]
landlock:
  compatibility: hard_requirement
process:
  run_as_user: sandbox
  run_as_group: sandbox
network_policies:
  github:
    name: github
    endpoints:
      - host: api.github.com
        port: 443
      - host: "*.githubusercontent.com"
        ports: [443, 8443]
        enforcement: audit
        access: read-only
    binaries:
      - path: /usr/bin/git
      - path: /usr/lib/git-core/*
  local:
    endpoints:
      - host: 127.0.0.2
        port: 8080
        allowed_ips: [127.0.0.0/8]
`

func TestParseSample(t *testing.T) {
	p, err := Parse([]byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	if !p.LandlockHard() || !p.Filesystem.IncludeWorkdir || p.Process.RunAsUser != "sandbox" {
		t.Fatalf("static sections wrong: %+v", p)
	}
	gh := p.NetworkPolicies["github"]
	if gh == nil || len(gh.Endpoints) != 2 || len(gh.Binaries) != 2 || gh.Endpoints[1].Ports[1] != 8443 {
		t.Fatalf("github rule wrong: %+v", gh)
	}
	if p.NetworkPolicies["local"].Name != "local" {
		t.Fatalf("rule name not defaulted to key")
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct {
		name, doc, want string
	}{
		{"wildcard middle", "version: 1\nnetwork_policies:\n  github:\n    endpoints:\n      - host: api.*.com\n        port: 443\n",
			`network_policies.github.endpoints[0].host (line 5): wildcard allowed only as the first label, e.g. "*.example.com"`},
		{"wildcard partial label", "version: 1\nnetwork_policies:\n  g:\n    endpoints:\n      - host: 'a*.example.com'\n        port: 443\n",
			`network_policies.g.endpoints[0].host (line 5): wildcard allowed only as the first label`},
		{"unknown top", "version: 1\nfoo: bar\n", `foo (line 2): unknown field "foo"`},
		{"unknown nested", "version: 1\nfilesystem_policy:\n  read_only: [/usr]\n  writable: [/x]\n", `filesystem_policy.writable (line 4): unknown field`},
		{"no version", "filesystem_policy:\n  read_only: [/usr]\n", `version (line 1): is required`},
		{"bad version", "version: 2\n", `version (line 1): must be 1 (got 2)`},
		{"version string", "version: one\n", `version (line 1): must be an integer`},
		{"relative path", "version: 1\nfilesystem_policy:\n  read_write:\n    - tmp\n", `filesystem_policy.read_write[0] (line 4): path must be absolute`},
		{"dotdot", "version: 1\nfilesystem_policy:\n  read_only: [/usr/../etc]\n", `filesystem_policy.read_only[0] (line 3): path must not contain '..'`},
		{"root rw", "version: 1\nfilesystem_policy:\n  read_write: [/]\n", `too broad`},
		{"landlock", "version: 1\nlandlock:\n  compatibility: maybe\n", `landlock.compatibility (line 3): must be "best_effort" or "hard_requirement"`},
		{"root user", "version: 1\nprocess:\n  run_as_user: root\n", `process.run_as_user (line 3): the agent must not run as root`},
		{"no port", "version: 1\nnetwork_policies:\n  x:\n    endpoints:\n      - host: a.example.com\n", `network_policies.x.endpoints[0].port (line 5): set port`},
		{"port range", "version: 1\nnetwork_policies:\n  x:\n    endpoints:\n      - host: a.example.com\n        ports: [0, 70000]\n", `network_policies.x.endpoints[0].ports[0] (line 6): port must be 1-65535`},
		{"enforcement", "version: 1\nnetwork_policies:\n  x:\n    endpoints:\n      - host: a.example.com\n        port: 1\n        enforcement: block\n", `network_policies.x.endpoints[0].enforcement (line 7): must be enforce or audit`},
		{"access", "version: 1\nnetwork_policies:\n  x:\n    endpoints:\n      - {host: a.example.com, port: 1, access: write}\n", `network_policies.x.endpoints[0].access (line 5)`},
		{"relative binary", "version: 1\nnetwork_policies:\n  x:\n    endpoints: [{host: a.b, port: 1}]\n    binaries:\n      - path: git\n", `network_policies.x.binaries[0] (line 6): binary must be an absolute path`},
		{"no endpoints", "version: 1\nnetwork_policies:\n  x:\n    binaries: [/usr/bin/git]\n", `network_policies.x.endpoints (line 3): a rule needs at least one endpoint`},
		{"endpoint unsupported", "version: 1\nnetwork_policies:\n  x:\n    endpoints:\n      - host: a.b\n        port: 1\n        path: /x\n", `network_policies.x.endpoints[0].path (line 7): path is not supported by this openshell version`},
		{"endpoint unknown field", "version: 1\nnetwork_policies:\n  x:\n    endpoints:\n      - host: a.b\n        port: 1\n        colour: red\n", `network_policies.x.endpoints[0].colour (line 7): unknown field "colour"`},
		{"bad cidr", "version: 1\nnetwork_policies:\n  x:\n    endpoints:\n      - {host: a.b, port: 1, allowed_ips: [10.0.0.0/99]}\n", `network_policies.x.endpoints[0].allowed_ips[0] (line 5)`},
		{"not mapping", "- a\n- b\n", `(document) (line 1): must be a mapping`},
		{"syntax", "version: [1\n", `(document): not valid YAML`},
		{"duplicate key", "version: 1\nversion: 1\n", `version (line 2): duplicate key`},
		{"list type", "version: 1\nfilesystem_policy:\n  read_only: /usr\n", `filesystem_policy.read_only (line 3): must be a list`},
		{"bool type", "version: 1\nfilesystem_policy:\n  include_workdir: yes please\n", `filesystem_policy.include_workdir (line 3): must be true or false`},
		{"two docs", "version: 1\n---\nversion: 1\n", `more than one YAML document`},
		{"broad wildcard", "version: 1\nnetwork_policies:\n  x:\n    endpoints: [{host: '*.com', port: 443}]\n", `too broad`},
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
			if !errors.As(err, &ve) || len(ve.Errors) == 0 {
				t.Fatalf("error is not a *ValidationError: %T", err)
			}
		})
	}
}

func TestParseReportsAllErrors(t *testing.T) {
	_, err := Parse([]byte("version: 1\nfilesystem_policy:\n  read_only: [usr]\n  read_write: [tmp]\n"))
	var ve *ValidationError
	if !errors.As(err, &ve) || len(ve.Errors) != 2 {
		t.Fatalf("want 2 errors, got %v", err)
	}
}

func TestProtoRoundTrip(t *testing.T) {
	p, err := Parse([]byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	m := p.ToProto()
	if m.GetNetworkPolicies()["github"].GetEndpoints()[1].GetEnforcement() != "audit" {
		t.Fatalf("proto lost enforcement: %v", m)
	}
	assertRoundTrips(t, m)
}

// assertRoundTrips checks that m survives the wire (proto bytes → FromProto) and
// YAML (Marshal → Parse) unchanged.
func assertRoundTrips(t *testing.T, m *sandboxv1.SandboxPolicy) {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	m2 := &sandboxv1.SandboxPolicy{}
	if err := proto.Unmarshal(b, m2); err != nil {
		t.Fatal(err)
	}
	p2, err := FromProto(m2)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(p2.ToProto(), m) {
		t.Fatalf("proto round trip changed the policy:\n%v\n%v", p2.ToProto(), m)
	}
	y, err := p2.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	p3, err := Parse(y)
	if err != nil {
		t.Fatalf("Marshal output does not parse: %v\n%s", err, y)
	}
	if !proto.Equal(p3.ToProto(), m) {
		t.Fatalf("yaml round trip changed the policy:\n%s", y)
	}
}

func TestHash(t *testing.T) {
	a := MustParse(t, sample).ToProto()
	b := MustParse(t, sample).ToProto()
	if Hash(a) != Hash(b) || len(Hash(a)) != 64 {
		t.Fatalf("equal policies hash differently: %s %s", Hash(a), Hash(b))
	}
	b.NetworkPolicies["github"].Endpoints[0].Port = 444
	if Hash(a) == Hash(b) {
		t.Fatal("different policies hash equally")
	}
}

func TestFromProtoRejects(t *testing.T) {
	p := MustParse(t, sample).ToProto()
	p.NetworkPolicies["github"].Endpoints[0].Host = "a.*.com"
	p.NetworkPolicies["github"].Endpoints[1].Port = 70000
	_, err := FromProto(p)
	if err == nil || !strings.Contains(err.Error(), "network_policies.github.endpoints[0].host: wildcard") ||
		!strings.Contains(err.Error(), "endpoints[1].port") {
		t.Fatalf("got %v", err)
	}
	if d, err := FromProto(nil); err != nil || len(d.NetworkPolicies) != 0 {
		t.Fatalf("nil proto must give the default policy: %v", err)
	}
}

func TestDefault(t *testing.T) {
	d := Default()
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	c := MustCompile(d)
	if dec := c.Decide("example.com", 443, "/usr/bin/curl"); dec.Allow {
		t.Fatalf("default policy allowed network: %+v", dec)
	}
	if !d.Filesystem.IncludeWorkdir {
		t.Fatal("default must make the workdir writable")
	}
}

func MustParse(t testing.TB, s string) *Policy {
	t.Helper()
	p, err := Parse([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDecide(t *testing.T) {
	c := MustCompile(MustParse(t, sample))
	cases := []struct {
		name     string
		req      Request
		allow    bool
		audit    bool
		rule     string
		explicit bool
		reason   string
	}{
		{"exact allowed", Request{Host: "api.github.com", Port: 443, Binaries: []string{"/usr/bin/git"}}, true, false, "github", true, ""},
		{"case insensitive", Request{Host: "API.GitHub.com.", Port: 443, Binaries: []string{"/usr/bin/git"}}, true, false, "github", true, ""},
		{"glob binary", Request{Host: "api.github.com", Port: 443, Binaries: []string{"/usr/lib/git-core/git-remote-https"}}, true, false, "github", true, ""},
		{"ancestor binary without opt-in", Request{Host: "api.github.com", Port: 443, Binaries: []string{"/usr/bin/ssh", "/usr/bin/git"}}, false, false, "github", true, "its ancestor /usr/bin/git matches /usr/bin/git, but that entry does not set ancestors: true"},
		{"preloaded binary", Request{Host: "api.github.com", Port: 443, Binaries: []string{"/usr/bin/git"}, Taint: []string{"it runs with LD_PRELOAD set"}}, false, false, "github", true, "binary /usr/bin/git may not use network_policies.github.binaries: it matches /usr/bin/git, but it runs with LD_PRELOAD set"},
		{"wrong binary enforced", Request{Host: "api.github.com", Port: 443, Binaries: []string{"/usr/bin/curl"}}, false, false, "github", true, "binary /usr/bin/curl is not listed in network_policies.github.binaries"},
		{"unknown binary enforced", Request{Host: "api.github.com", Port: 443}, false, false, "github", true, "(unknown)"},
		{"wrong port", Request{Host: "api.github.com", Port: 80, Binaries: []string{"/usr/bin/git"}}, false, false, "", false, "no network_policies endpoint names this host and port"},
		{"wildcard one label", Request{Host: "raw.githubusercontent.com", Port: 8443, Binaries: []string{"/usr/bin/git"}}, true, false, "github", false, ""},
		{"wildcard not apex", Request{Host: "githubusercontent.com", Port: 443, Binaries: []string{"/usr/bin/git"}}, false, false, "", false, ""},
		{"wildcard not two labels", Request{Host: "a.b.githubusercontent.com", Port: 443, Binaries: []string{"/usr/bin/git"}}, false, false, "", false, ""},
		{"audit wrong binary", Request{Host: "raw.githubusercontent.com", Port: 443, Binaries: []string{"/usr/bin/curl"}}, true, true, "github", false, "audit:"},
		{"read-only GET", Request{Host: "raw.githubusercontent.com", Port: 443, Binaries: []string{"/usr/bin/git"}, Method: "GET"}, true, false, "github", false, ""},
		{"read-only POST audited", Request{Host: "raw.githubusercontent.com", Port: 443, Binaries: []string{"/usr/bin/git"}, Method: "POST"}, true, true, "github", false, "method POST"},
		{"ip literal any binary", Request{Host: "127.0.0.2", Port: 8080}, true, false, "local", true, ""},
		{"ip other", Request{Host: "127.0.0.3", Port: 8080}, false, false, "", false, ""},
		{"unlisted host", Request{Host: "evil.example", Port: 443, Binaries: []string{"/usr/bin/git"}}, false, false, "", false, "add one (e.g. host: evil.example, port: 443)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := c.Evaluate(tc.req)
			if d.Allow != tc.allow || d.Audit != tc.audit || d.Rule != tc.rule || d.Explicit != tc.explicit {
				t.Fatalf("got %+v", d)
			}
			if !strings.Contains(d.Reason, tc.reason) || d.Reason == "" {
				t.Fatalf("reason %q does not contain %q", d.Reason, tc.reason)
			}
		})
	}
	if d := c.Destination("api.github.com", 443); !d.Allow || d.Rule != "github" {
		t.Fatalf("Destination ignores binaries: %+v", d)
	}
	if d := c.Destination("evil.example", 443); d.Allow {
		t.Fatalf("Destination allowed an unlisted host: %+v", d)
	}
	if d := c.Decide("127.0.0.2", 8080, ""); len(d.AllowedIPs) != 1 || d.AllowedIPs[0].String() != "127.0.0.0/8" {
		t.Fatalf("allowed_ips not carried: %+v", d)
	}
}

func TestGlob(t *testing.T) {
	for _, tc := range []struct {
		glob, path string
		want       bool
	}{
		{"/usr/bin/git", "/usr/bin/git", true},
		{"/usr/bin/git", "/usr/bin/gitk", false},
		{"/usr/bin/pip*", "/usr/bin/pip3", true},
		{"/usr/bin/*", "/usr/bin/x/y", false},
		{"/usr/lib/node_modules/**", "/usr/lib/node_modules/a/b/cli.js", true},
		{"/usr/**/python3*", "/usr/local/bin/python3.11", true},
		{"/usr/bin/python3.?", "/usr/bin/python3.9", true},
		{"/usr/bin/python3.?", "/usr/bin/python3.11", false},
		{"/opt/[ab]in/x", "/opt/bin/x", true},
		{"/opt/[!ab]in/x", "/opt/bin/x", false},
		{"/a.b", "/aXb", false},
		{"/a+b", "/a+b", true},
	} {
		re, err := compileGlob(tc.glob)
		if err != nil {
			t.Fatalf("%s: %v", tc.glob, err)
		}
		if got := re.MatchString(tc.path); got != tc.want {
			t.Errorf("%s ~ %s = %v, want %v", tc.glob, tc.path, got, tc.want)
		}
	}
	for _, bad := range []string{"/a/[b", "/a/[]"} {
		if _, err := compileGlob(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(sample))
	f.Add([]byte("version: 1\n"))
	f.Add([]byte("version: 1\nnetwork_policies:\n  x:\n    endpoints: [{host: '*.a.b', port: 1}]\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Add([]byte("version: 1\nnetwork_policies: {x: {endpoints: [{host: 1.2.3.4, ports: [1,2]}], binaries: [{path: /a}]}}\n"))
	f.Add([]byte(l7Sample))
	f.Add([]byte("version: 1\nnetwork_policies: {x: {endpoints: [{host: a.example.com, port: 443}], binaries: [{path: /usr/bin/git, ancestors: true}, {path: /usr/bin/*, ancestors: false}, /a]}}\n"))
	f.Add([]byte("version: 1\nnetwork_policies: {x: {endpoints: [{host: a.example.com, port: 443, protocol: rest, tls: terminate, rules: [{allow: {method: GET, path: /a/**, query: {q: {any: [x, 'y*']}}}}], deny_rules: [{path: /a/b}]}]}}\n"))
	f.Add([]byte("version: 1\nnetwork_policies: {x: {endpoints: [{host: a.example.com, port: 80, protocol: rest, allow_encoded_slash: true, access: read-only, deny_rules: [{method: '*', query: {a: b}}]}]}}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(data)
		if err != nil {
			var ve *ValidationError
			if !errors.As(err, &ve) || len(ve.Errors) == 0 {
				t.Fatalf("error without field errors: %v", err)
			}
			for _, fe := range ve.Errors {
				if fe.Path == "" {
					t.Fatalf("error without a path: %v", fe)
				}
			}
			return
		}
		c, err := Compile(p)
		if err != nil {
			t.Fatalf("parsed policy does not compile: %v", err)
		}
		c.Decide("a.example.com", 443, "/usr/bin/x")
		for _, r := range []Request{
			{Host: "a.example.com", Port: 443, Method: "GET", Path: "/a/b", Query: "q=x&q=y"},
			{Host: "a.example.com", Port: 80, Method: "DELETE", Path: "/a/%2e%2e/b%2Fc", Query: "a=%zz"},
			{Host: "api.github.com", Port: 443, Method: "POST", Path: "//repos/x/y/issues"},
		} {
			if d := c.Evaluate(r); !d.Allow && d.Reason == "" {
				t.Fatalf("refusal without a reason: %+v", d)
			}
		}
		// A valid policy survives both round trips, binaries (and their ancestors
		// opt-in) unchanged.
		back, err := FromProto(p.ToProto())
		if err != nil {
			t.Fatalf("FromProto(ToProto) failed: %v", err)
		}
		for name, r := range p.NetworkPolicies {
			if !slices.Equal(r.Binaries, back.NetworkPolicies[name].Binaries) {
				t.Fatalf("binaries of %s changed in the proto round trip: %+v -> %+v", name, r.Binaries, back.NetworkPolicies[name].Binaries)
			}
		}
		y, err := p.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Parse(y); err != nil {
			t.Fatalf("Marshal output does not parse: %v\n%s", err, y)
		}
	})
}

// TestAncestorsOptIn: an entry matches an ancestor's executable only with
// ancestors: true, never a tainted ancestor, and the opt-in survives YAML and proto
// round trips.
func TestAncestorsOptIn(t *testing.T) {
	doc := `version: 1
network_policies:
  git:
    endpoints: [{host: api.github.com, port: 443}]
    binaries:
      - {path: /usr/bin/git, ancestors: true}
      - path: /usr/bin/curl
`
	p := MustParse(t, doc)
	if b := p.NetworkPolicies["git"].Binaries; len(b) != 2 || !b[0].Ancestors || b[1].Ancestors {
		t.Fatalf("parsed binaries: %+v", b)
	}
	out, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "ancestors: true") || strings.Count(string(out), "ancestors") != 1 {
		t.Fatalf("Marshal lost or invented the opt-in:\n%s", out)
	}
	back := MustParse(t, string(out))
	m := back.ToProto()
	wire, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var m2 sandboxv1.SandboxPolicy
	if err := proto.Unmarshal(wire, &m2); err != nil {
		t.Fatal(err)
	}
	fp, err := FromProto(&m2)
	if err != nil {
		t.Fatal(err)
	}
	if b := fp.NetworkPolicies["git"].Binaries; len(b) != 2 || !b[0].Ancestors || b[1].Ancestors {
		t.Fatalf("after YAML and proto round trips: %+v", b)
	}
	// On the wire the opt-in is field 1000 alone, next to upstream's path (1): a
	// peer without it skips one unknown varint and reads the same path.
	nb, err := proto.Marshal(m2.GetNetworkPolicies()["git"].GetBinaries()[0])
	if err != nil {
		t.Fatal(err)
	}
	var fields []protowire.Number
	for b := nb; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if n < 0 || m < 0 {
			t.Fatalf("bad wire bytes %x", nb)
		}
		fields = append(fields, num)
		b = b[n+m:]
	}
	if !slices.Equal(fields, []protowire.Number{1, 1000}) {
		t.Fatalf("NetworkBinary on the wire has fields %v, want [1 1000]", fields)
	}
	// What an upstream SDK sends (path, the deprecated harness flag) means no
	// ancestor matching: harness is not taken for the opt-in.
	upstream := protowire.AppendTag(nil, 1, protowire.BytesType)
	upstream = protowire.AppendString(upstream, "/usr/bin/git")
	upstream = protowire.AppendTag(upstream, 2, protowire.VarintType)
	upstream = protowire.AppendVarint(upstream, 1)
	var ub sandboxv1.NetworkBinary
	if err := proto.Unmarshal(upstream, &ub); err != nil || ub.GetPath() != "/usr/bin/git" || ub.GetAncestors() {
		t.Fatalf("upstream binary decoded as %+v (%v)", &ub, err)
	}
	c := MustCompile(fp)
	for _, tc := range []struct {
		name  string
		r     Request
		allow bool
		why   string
	}{
		{"git itself", Request{Binaries: []string{"/usr/bin/git"}}, true, ""},
		{"child of git", Request{Binaries: []string{"/usr/lib/git-core/git-remote-https", "/usr/bin/git"}}, true, ""},
		{"grandchild of git", Request{Binaries: []string{"/usr/bin/ssh", "/bin/sh", "/usr/bin/git"}}, true, ""},
		{"child of curl", Request{Binaries: []string{"/usr/bin/python3", "/usr/bin/curl"}}, false, "does not set ancestors: true"},
		{"curl itself", Request{Binaries: []string{"/usr/bin/curl"}}, true, ""},
		{"child of a preloaded git", Request{Binaries: []string{"/usr/bin/ssh", "/usr/bin/git"}, Taint: []string{"", "it runs with LD_PRELOAD set"}}, false, "its ancestor /usr/bin/git matches /usr/bin/git, but it runs with LD_PRELOAD set"},
		{"preloaded child of git", Request{Binaries: []string{"/usr/bin/python3", "/usr/bin/git"}, Taint: []string{"it runs with LD_AUDIT set", ""}}, true, ""},
		{"preloaded curl", Request{Binaries: []string{"/usr/bin/curl"}, Taint: []string{"it runs with LD_LIBRARY_PATH set"}}, false, "LD_LIBRARY_PATH"},
	} {
		tc.r.Host, tc.r.Port = "api.github.com", 443
		d := c.Evaluate(tc.r)
		if d.Allow != tc.allow || !strings.Contains(d.Reason, tc.why) {
			t.Errorf("%s: got allow=%v %q, want allow=%v containing %q", tc.name, d.Allow, d.Reason, tc.allow, tc.why)
		}
	}
}

// TestAncestorsOnLauncherRefused: ancestors: true on a glob matching a shell (or
// another program that starts arbitrary ones) would hand the rule to everything.
func TestAncestorsOnLauncherRefused(t *testing.T) {
	for _, glob := range []string{"/bin/bash", "/usr/bin/*", "/**", "/bin/?ash"} {
		_, err := Parse([]byte("version: 1\nnetwork_policies:\n  x:\n    endpoints: [{host: a.example.com, port: 443}]\n    binaries:\n      - {path: \"" + glob + "\", ancestors: true}\n"))
		if err == nil || !strings.Contains(err.Error(), "network_policies.x.binaries[0].ancestors (line 6)") || !strings.Contains(err.Error(), "name the program that opens the connection") {
			t.Errorf("%s: %v", glob, err)
		}
	}
	if _, err := Parse([]byte("version: 1\nnetwork_policies:\n  x:\n    endpoints: [{host: a.example.com, port: 443}]\n    binaries: [{path: /usr/bin/git, ancestors: yes}]\n")); err == nil || !strings.Contains(err.Error(), "ancestors") {
		t.Errorf("non-boolean ancestors accepted: %v", err)
	}
}
