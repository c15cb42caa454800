package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestServicesSettings(t *testing.T) {
	file := filepath.Join(t.TempDir(), "gw.toml")
	if err := os.WriteFile(file, []byte("services_port = 18080\nservices_domain = \"svc.test\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	resolve := func(args []string, env map[string]string) (*Config, error) {
		fs := pflag.NewFlagSet("gw", pflag.ContinueOnError)
		BindFlags(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		return Resolve(fs, func(k string) string { return env[k] })
	}
	c, err := resolve(nil, nil)
	if err != nil || c.ServicesPort != 0 || c.ServicesDomain != "" {
		t.Fatalf("defaults: %+v, %v", c, err)
	}
	c, err = resolve([]string{"--config", file}, nil)
	if err != nil || c.ServicesPort != 18080 || c.ServicesDomain != "svc.test" {
		t.Fatalf("from the file: %+v, %v", c, err)
	}
	c, err = resolve([]string{"--config", file, "--services-port", "18081"}, map[string]string{"OPENSHELL_SERVICES_DOMAIN": "other.test"})
	if err != nil || c.ServicesPort != 18081 || c.ServicesDomain != "other.test" {
		t.Fatalf("flag and env over the file: %+v, %v", c, err)
	}
	if _, err := resolve(nil, map[string]string{"OPENSHELL_SERVICES_PORT": "x"}); err == nil || !strings.Contains(err.Error(), "OPENSHELL_SERVICES_PORT") {
		t.Errorf("OPENSHELL_SERVICES_PORT=x: %v; want an error naming it", err)
	}
	for _, tc := range []struct {
		port   int
		domain string
		want   string
	}{
		{-1, "", "services_port -1"},
		{70000, "", "services_port 70000"},
		{0, "Bad_Domain", "services_domain \"Bad_Domain\""},
		{0, "a..b", "services_domain \"a..b\""},
	} {
		c := Defaults()
		c.StateDir = t.TempDir()
		c.ServicesPort, c.ServicesDomain = tc.port, tc.domain
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%d, %q) = %v; want an error naming %s", tc.port, tc.domain, err, tc.want)
		}
	}
	c2 := Defaults()
	c2.StateDir = t.TempDir()
	c2.ServicesDomain = "svc.example.test."
	if err := c2.Validate(); err != nil {
		t.Errorf("a valid domain refused: %v", err)
	}
}
