package credentials

import (
	"encoding/base64"
	"net/http"
	"strings"
	"testing"

	"github.com/openshell/openshell/supervisor/egress"
)

func TestStorePlaceholdersAndGuest(t *testing.T) {
	ca, err := NewCA("sb")
	if err != nil {
		t.Fatal(err)
	}
	st, err := New(ca, []Provider{
		{Name: "gh", Credentials: map[string]string{"GH_TOKEN": "ghp_real", "GH_USER": "bot"}, Hosts: []string{"API.github.com."}},
		{Name: "llm", Credentials: map[string]string{"LLM_KEY": "sk-real"}, Hosts: []string{"llm.example.com"}, Headers: []string{"X-Api-Key"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ps := st.Placeholders()
	if len(ps) != 2 || ps[0].Name != "gh" || ps[1].Name != "llm" || len(ps[0].Env) != 2 || ps[0].Hosts[0] != "api.github.com" {
		t.Fatalf("placeholders %+v", ps)
	}
	for _, p := range ps {
		for k, ph := range p.Env {
			if strings.Contains(ph, "real") || !strings.HasPrefix(ph, PlaceholderPrefix+p.Name+":"+k+":") {
				t.Fatalf("%s=%q is not a bare placeholder", k, ph)
			}
		}
	}
	g, err := NewGuest(ca, ps)
	if err != nil {
		t.Fatal(err)
	}
	if env := strings.Join(g.Env(), " "); !strings.Contains(env, "GH_TOKEN="+ps[0].Env["GH_TOKEN"]) || strings.Contains(env, "real") {
		t.Fatalf("guest env %q", env)
	}
	if !g.Terminate("api.github.com", 443) || g.Terminate("github.com", 443) {
		t.Fatal("Terminate does not follow the bound hosts")
	}
	ph := ps[0].Env["GH_TOKEN"]
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("x:"+ph))
	for _, tc := range []struct {
		host string
		tls  bool
		v    string
		ok   bool
	}{
		{"api.github.com", true, "Bearer " + ph, true},
		{"api.github.com", true, basic, true},
		{"api.github.com", false, "Bearer " + ph, false},
		{"evil.example", true, "Bearer " + ph, false},
		{"evil.example", true, basic, false},
		{"api.github.com", true, "Bearer " + PlaceholderPrefix + "gh:GH_TOKEN:00000000000000000000000000000000", false},
	} {
		h := http.Header{"Authorization": {tc.v}}
		err := g.Rewrite(tc.host, tc.tls, h)
		if (err == nil) != tc.ok || h.Get("Authorization") != tc.v {
			t.Errorf("Rewrite(%s, tls=%v, %q) = %v, header now %q; want ok=%v and the header untouched", tc.host, tc.tls, tc.v, err, h.Get("Authorization"), tc.ok)
		}
	}
	// What the runner sends is checked: a placeholder that names another provider or
	// key, or no placeholder at all, is refused.
	for _, bad := range [][]egress.PlaceholderProvider{
		{{Name: "gh", Env: map[string]string{"GH_TOKEN": ps[1].Env["LLM_KEY"]}, Hosts: []string{"a.example"}}},
		{{Name: "gh", Env: map[string]string{"GH_TOKEN": "ghp_real"}, Hosts: []string{"a.example"}}},
		{{Name: "gh", Env: map[string]string{"GH_TOKEN": ph + "x"}, Hosts: []string{"a.example"}}},
		{{Name: "gh", Env: map[string]string{"GH_TOKEN": ph}, Hosts: []string{"a b"}}},
		{{Name: "gh", Env: map[string]string{"GH_TOKEN": ph}}},
		{{Name: "../x", Env: map[string]string{"GH_TOKEN": ph}, Hosts: []string{"a.example"}}},
	} {
		if _, err := NewGuest(ca, bad); err == nil {
			t.Errorf("NewGuest accepted %+v", bad)
		}
	}
}

// FuzzNewGuest: whatever the runner answers, the guest never panics, and an accepted
// answer gives an environment of placeholders only.
func FuzzNewGuest(f *testing.F) {
	f.Add([]byte(`{"providers":[{"name":"api","env":{"TOKEN":"openshell-placeholder:api:TOKEN:0123456789abcdef0123456789abcdef"},"hosts":["localhost"]}]}`))
	f.Add([]byte(`{"providers":[{"name":"api","env":{"TOKEN":"real"},"hosts":["*.x"]}]}`))
	ca, err := NewCA("fuzz")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		set, err := egress.ParsePlaceholderSet(b)
		if err != nil {
			return
		}
		g, err := NewGuest(ca, set.Providers)
		if err != nil {
			return
		}
		for _, kv := range g.Env() {
			k, v, _ := strings.Cut(kv, "=")
			if !strings.HasPrefix(v, PlaceholderPrefix) || !keyRE().MatchString(k) {
				t.Fatalf("env %q", kv)
			}
		}
		g.Rewrite("localhost", true, http.Header{"Authorization": {"Bearer " + string(b)}})
	})
}
