package vm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/openshell/openshell/internal/hostcred"
	"github.com/openshell/openshell/supervisor/credentials"
)

// TestEgressPolicyCredential: the runner's spec gets the credential of its own
// sandbox from the gateway's key and the operator's upstream CA; bad files are
// refused by Validate, naming the flag.
func TestEgressPolicyCredential(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, hostcred.KeyFile)
	key, err := hostcred.LoadOrCreate(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := credentials.NewCA("x")
	caFile := filepath.Join(dir, "ca.pem")
	os.WriteFile(caFile, ca.CertPEM(), 0o644)
	c := Config{StateDir: dir, GatewayEndpoint: "127.0.0.1:1", RunnerKeyFile: keyFile, EgressCAFile: caFile}.WithDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	d := &Driver{cfg: c}
	p, err := d.egressPolicy("sb-1")
	if err != nil {
		t.Fatal(err)
	}
	if !hostcred.Verify(key, "sb-1", p.RunnerCredential) || hostcred.Verify(key, "sb-2", p.RunnerCredential) || p.UpstreamCAFile != caFile {
		t.Fatalf("egress policy %+v", p)
	}
	notPEM := filepath.Join(dir, "x.pem")
	os.WriteFile(notPEM, []byte("nope"), 0o644)
	for _, tc := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.EgressCAFile = notPEM }, "--egress-ca-file"},
		{func(c *Config) { c.EgressCAFile = filepath.Join(dir, "missing") }, "--egress-ca-file"},
		{func(c *Config) { c.RunnerKeyFile = caFile }, "--runner-key-file"},
	} {
		bad := c
		tc.mod(&bad)
		if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate = %v, want an error naming %s", err, tc.want)
		}
	}
}
