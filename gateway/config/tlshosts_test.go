package config

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// tls_hosts from the environment (comma-separated) and from TOML (a list); a URL in
// it is refused naming the key.
func TestTLSHosts(t *testing.T) {
	c, err := Resolve(nil, func(k string) string {
		return map[string]string{"OPENSHELL_TLS_HOSTS": " openshell.ns.svc, 10.96.0.10 ,,", "OPENSHELL_STATE_DIR": "/x"}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.TLSHosts, []string{"openshell.ns.svc", "10.96.0.10"}) {
		t.Errorf("from the environment: %q", c.TLSHosts)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	file := filepath.Join(t.TempDir(), "gw.toml")
	if err := os.WriteFile(file, []byte("tls_hosts = [\"openshell\", \"https://openshell.ns.svc:17670\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err = Resolve(nil, func(k string) string {
		return map[string]string{"OPENSHELL_GATEWAY_CONFIG": file, "OPENSHELL_STATE_DIR": "/x"}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.TLSHosts) != 2 {
		t.Fatalf("from TOML: %q", c.TLSHosts)
	}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "tls_hosts") || !strings.Contains(err.Error(), "without port or scheme") {
		t.Errorf("a URL in tls_hosts: err = %v, want one naming tls_hosts and the fix", err)
	}
}
