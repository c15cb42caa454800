package policy

import (
	"os"
	"strings"
	"testing"
)

// The policy example in the README parses and means what its comments say.
func TestREADMEExample(t *testing.T) {
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(data), "```yaml\n")
	if !ok {
		t.Fatal("README.md has no yaml block")
	}
	block, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatal("README.md's yaml block is not closed")
	}
	p, err := Parse([]byte(block))
	if err != nil {
		t.Fatalf("the README policy does not parse: %v", err)
	}
	gh := p.NetworkPolicies["github"]
	if gh == nil || len(gh.Endpoints) != 1 || len(gh.Endpoints[0].Rules) != 1 || len(gh.Endpoints[0].DenyRules) != 1 {
		t.Fatalf("github rule parsed wrong: %+v", gh)
	}
	if p.Process.RunAsUser != "agent" || len(p.NetworkPolicies["pypi"].Binaries) != 2 {
		t.Fatalf("README policy parsed wrong: %+v", p)
	}
	c, err := Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	req := Request{Host: "api.github.com", Port: 443, Binaries: []string{"/usr/bin/curl"}, Method: "GET", Path: "/repos/o/r/issues"}
	if d := c.Evaluate(req); !d.Allow {
		t.Fatalf("GET /repos/o/r/issues refused: %+v", d)
	}
	req.Path = "/repos/o/r/actions/runs"
	if d := c.Evaluate(req); d.Allow {
		t.Fatalf("the deny rule did not refuse %s: %+v", req.Path, d)
	}
	if d := c.Evaluate(Request{Host: "files.pythonhosted.org", Port: 443, Binaries: []string{"/usr/bin/curl"}}); d.Allow {
		t.Fatalf("pypi allowed a binary outside its binaries: %+v", d)
	}
	// As the comments say: pip runs as python; only the ancestors entry admits children.
	if d := c.Evaluate(Request{Host: "pypi.org", Port: 443, Binaries: []string{"/usr/bin/python3.11"}}); !d.Allow {
		t.Fatalf("pip (python) refused: %+v", d)
	}
	if d := c.Evaluate(Request{Host: "pypi.org", Port: 443, Binaries: []string{"/usr/bin/curl", "/usr/bin/python3.11"}}); d.Allow {
		t.Fatalf("a child of /usr/bin/python3* allowed without ancestors: %+v", d)
	}
	if d := c.Evaluate(Request{Host: "github.com", Port: 443, Binaries: []string{"/usr/lib/git-core/git-remote-https", "/usr/bin/git"}}); !d.Allow {
		t.Fatalf("git's helper refused despite ancestors: true: %+v", d)
	}
}
