package credentials

import (
	"reflect"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/openshell/openshell/api/openshellv1"
)

func TestEnvironmentRoundTrip(t *testing.T) {
	in := []Provider{
		{Name: "api", Credentials: map[string]string{"API_TOKEN": "t", "API_USER": "u"}, Hosts: []string{"api.example.com"}},
		{Name: "gh", Credentials: map[string]string{"GH": "g"}, Hosts: []string{"*.github.com", "github.com"}, Headers: []string{"Authorization", "X-Token"}, AllowWildcardHosts: true},
	}
	resp, err := EnvironmentResponse(in)
	if err != nil {
		t.Fatal(err)
	}
	// Through the wire, as the supervisor receives it.
	b, err := proto.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	got := &openshellv1.GetSandboxProviderEnvironmentResponse{}
	if err := proto.Unmarshal(b, got); err != nil {
		t.Fatal(err)
	}
	out, err := ProvidersFromEnvironment(got)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(out, in) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", out, in)
	}
	if _, err := EnvironmentResponse(append(in, Provider{Name: "dup", Credentials: map[string]string{"GH": "x"}, Hosts: []string{"x.example.com"}})); err == nil || !strings.Contains(err.Error(), "both set GH") {
		t.Fatalf("duplicate key: %v", err)
	}
	got.StaticCredentialBindings = nil
	if _, err := ProvidersFromEnvironment(got); err == nil || !strings.Contains(err.Error(), "no static credential binding") {
		t.Fatalf("unbound key: %v", err)
	}
}

// FuzzProvidersFromEnvironment: any answer from the gateway decodes or is refused,
// never panics, and what decodes encodes back to the same providers.
func FuzzProvidersFromEnvironment(f *testing.F) {
	seed, _ := EnvironmentResponse([]Provider{{Name: "a", Credentials: map[string]string{"K": "v"}, Hosts: []string{"h.example.com"}, Headers: []string{"X-K"}}})
	b, _ := proto.Marshal(seed)
	f.Add(b)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		resp := &openshellv1.GetSandboxProviderEnvironmentResponse{}
		if proto.Unmarshal(b, resp) != nil {
			return
		}
		ps, err := ProvidersFromEnvironment(resp)
		if err != nil {
			return
		}
		again, err := EnvironmentResponse(ps)
		if err != nil {
			t.Fatalf("decoded providers do not encode: %v", err)
		}
		ps2, err := ProvidersFromEnvironment(again)
		if err != nil || !reflect.DeepEqual(ps, ps2) {
			t.Fatalf("second round trip differs: %v\n%+v\n%+v", err, ps, ps2)
		}
	})
}

func TestConfigRoundTrip(t *testing.T) {
	in := Provider{Name: "gh", Type: "github", Credentials: map[string]string{"T": "v"}, Hosts: []string{"*.github.com", "github.com"},
		Headers: []string{"Authorization", "X-Token"}, AllowWildcardHosts: true}
	cfg := in.Config()
	if cfg[ConfigHosts] != "*.github.com,github.com" || cfg[ConfigHeaders] != "Authorization,X-Token" || cfg[ConfigAllowWildcardHosts] != "true" {
		t.Fatalf("config %v", cfg)
	}
	if out := FromConfig("gh", "github", in.Credentials, cfg); !reflect.DeepEqual(out, in) {
		t.Fatalf("round trip %+v, want %+v", out, in)
	}
	if c := (Provider{Name: "bare"}).Config(); c != nil {
		t.Fatalf("a provider without a binding has config %v", c)
	}
	// Blanks and spaces in a hand-written config are dropped.
	if p := FromConfig("x", "t", nil, map[string]string{ConfigHosts: " a.example.com, ,b.example.com "}); !reflect.DeepEqual(p.Hosts, []string{"a.example.com", "b.example.com"}) {
		t.Fatalf("hosts %q", p.Hosts)
	}
}
