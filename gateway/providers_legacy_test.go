package gateway

import (
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/openshell/openshell/api/datamodelv1"
	"github.com/openshell/openshell/supervisor/credentials"
)

// legacyPayload encodes a provider in the earlier stored shape.
func legacyPayload() []byte {
	var b []byte
	str := func(n protowire.Number, s string) {
		b = protowire.AppendTag(b, n, protowire.BytesType)
		b = protowire.AppendString(b, s)
	}
	str(1, "github")
	str(2, "github")
	var entry []byte
	entry = protowire.AppendTag(entry, 1, protowire.BytesType)
	entry = protowire.AppendString(entry, "GITHUB_TOKEN")
	entry = protowire.AppendTag(entry, 2, protowire.BytesType)
	entry = protowire.AppendString(entry, "ghp_x")
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendBytes(b, entry)
	str(4, "*.github.com")
	str(4, "api.github.com")
	str(5, "Authorization")
	str(5, "X-Token")
	b = protowire.AppendTag(b, 6, protowire.VarintType)
	return protowire.AppendVarint(b, 1)
}

func TestLegacyProviderPayload(t *testing.T) {
	plain := legacyPayload()
	if !isLegacyProvider(plain) {
		t.Fatal("earlier payload not recognised")
	}
	p, err := decodeLegacyProvider(plain)
	if err != nil {
		t.Fatal(err)
	}
	want := &datamodelv1.Provider{Type: "github", Credentials: map[string]string{"GITHUB_TOKEN": "ghp_x"},
		Config: map[string]string{credentials.ConfigHosts: "*.github.com,api.github.com", credentials.ConfigHeaders: "Authorization,X-Token", credentials.ConfigAllowWildcardHosts: "true"}}
	if !proto.Equal(p, want) {
		t.Fatalf("decoded %v, want %v", p, want)
	}
	if err := validateProvider("github", p); err != nil {
		t.Fatalf("a valid earlier provider no longer validates: %v", err)
	}
	// The current shape is never taken for the earlier one.
	cur, err := proto.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	if isLegacyProvider(cur) {
		t.Fatal("a current payload was taken for the earlier shape")
	}
}

// FuzzDecodeLegacyProvider: stored bytes never panic the decoder, and what it accepts
// survives a marshal round trip.
func FuzzDecodeLegacyProvider(f *testing.F) {
	f.Add(legacyPayload())
	f.Add([]byte{0x0a, 0x00})
	f.Add([]byte{0x1a, 0x02, 0x08, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := decodeLegacyProvider(b)
		if err != nil {
			return
		}
		if _, err := proto.Marshal(p); err != nil {
			t.Fatalf("decoded provider does not marshal: %v", err)
		}
	})
}

// FuzzValidateProvider: whatever a client sends in CreateProvider is refused with an
// error or accepted with a name the store and CLI can show; never a panic.
func FuzzValidateProvider(f *testing.F) {
	f.Add("github", "github", "GITHUB_TOKEN", "v", "api.github.com", "Authorization", "false")
	f.Add("w", "generic", "K", "v", "*.example.com", "", "true")
	f.Add("", "", "", "", "*", "Host", "maybe")
	f.Fuzz(func(t *testing.T, name, typ, key, value, hosts, headers, wildcard string) {
		p := &datamodelv1.Provider{Type: typ, Credentials: map[string]string{key: value},
			Config: map[string]string{credentials.ConfigHosts: hosts, credentials.ConfigHeaders: headers, credentials.ConfigAllowWildcardHosts: wildcard}}
		if err := validateProvider(name, p); err != nil {
			return
		}
		if !providerNameRE.MatchString(name) || !credentialKeyRE.MatchString(key) {
			t.Fatalf("accepted name %q key %q", name, key)
		}
	})
}
