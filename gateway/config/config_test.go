package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestResolvePrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "gw.toml")
	if err := os.WriteFile(file, []byte(`
port = 1111
bind_address = "0.0.0.0"
driver = "docker"
health_port = 9090
[drivers.vm]
cpus = 4
memory_mib = 2048
`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		check   func(t *testing.T, c *Config)
		wantErr string
	}{
		{name: "defaults", check: func(t *testing.T, c *Config) {
			if c.Port != DefaultPort || c.BindAddress != "127.0.0.1" || c.DisableTLS || c.Driver != "" {
				t.Errorf("defaults wrong: %+v", c)
			}
		}},
		{name: "toml over default", args: []string{"--config", file}, check: func(t *testing.T, c *Config) {
			if c.Port != 1111 || c.BindAddress != "0.0.0.0" || c.Driver != "docker" || c.HealthPort != 9090 {
				t.Errorf("toml not applied: %+v", c)
			}
			if got := c.DriverTable("vm")["cpus"]; got != int64(4) {
				t.Errorf("drivers.vm.cpus = %#v, want 4", got)
			}
			if c.LogFormat != "text" {
				t.Errorf("unset TOML key must keep default, got %q", c.LogFormat)
			}
		}},
		{name: "config path from env", env: map[string]string{"OPENSHELL_GATEWAY_CONFIG": file}, check: func(t *testing.T, c *Config) {
			if c.Port != 1111 {
				t.Errorf("port = %d, want 1111", c.Port)
			}
		}},
		{name: "env over toml", args: []string{"--config", file}, env: map[string]string{"OPENSHELL_SERVER_PORT": "2222", "OPENSHELL_DRIVERS": "vm", "OPENSHELL_DISABLE_TLS": "true"},
			check: func(t *testing.T, c *Config) {
				if c.Port != 2222 || c.Driver != "vm" || !c.DisableTLS || c.BindAddress != "0.0.0.0" {
					t.Errorf("env not applied over toml: %+v", c)
				}
			}},
		{name: "flag over env", args: []string{"--config", file, "--port", "3333", "--drivers", "podman", "--disable-tls=false"},
			env: map[string]string{"OPENSHELL_SERVER_PORT": "2222", "OPENSHELL_DRIVERS": "vm", "OPENSHELL_DISABLE_TLS": "true"},
			check: func(t *testing.T, c *Config) {
				if c.Port != 3333 || c.Driver != "podman" || c.DisableTLS {
					t.Errorf("flag not applied over env: %+v", c)
				}
			}},
		{name: "flag default does not hide env", env: map[string]string{"OPENSHELL_BIND_ADDRESS": "10.0.0.1"}, check: func(t *testing.T, c *Config) {
			if c.BindAddress != "10.0.0.1" {
				t.Errorf("bind = %q", c.BindAddress)
			}
		}},
		{name: "bad env port", env: map[string]string{"OPENSHELL_SERVER_PORT": "abc"}, wantErr: "OPENSHELL_SERVER_PORT"},
		{name: "bad flag bool", env: map[string]string{"OPENSHELL_DISABLE_TLS": "maybe"}, wantErr: "disable_tls"},
		{name: "missing config file", args: []string{"--config", filepath.Join(dir, "nope.toml")}, wantErr: "nope.toml"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
			BindFlags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			c, err := Resolve(fs, func(k string) string { return tc.env[k] })
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want mention of %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestUnknownTOMLKey(t *testing.T) {
	file := filepath.Join(t.TempDir(), "gw.toml")
	os.WriteFile(file, []byte("prot = 1\n[drivers.vm]\nanything = 1\n"), 0o600)
	_, err := Resolve(nil, func(k string) string {
		if k == "OPENSHELL_GATEWAY_CONFIG" {
			return file
		}
		return ""
	})
	if err == nil || !strings.Contains(err.Error(), "prot") {
		t.Fatalf("err = %v, want unknown key prot", err)
	}
}

func TestValidateNamesField(t *testing.T) {
	tests := []struct {
		mut  func(c *Config)
		want string
	}{
		{func(c *Config) { c.Port = 70000 }, "port"},
		{func(c *Config) { c.HealthPort = -1 }, "health_port"},
		{func(c *Config) { c.Driver = "lxc" }, "drivers"},
		{func(c *Config) { c.BindAddress = "nohost" }, "bind_address"},
		{func(c *Config) { c.LogFormat = "xml" }, "log_format"},
		{func(c *Config) { c.DatabaseURL = "mysql://x" }, "database_url"},
		{func(c *Config) { c.StateDir = "" }, "state_dir"},
	}
	for _, tc := range tests {
		c := Defaults()
		c.StateDir = "/tmp/x"
		tc.mut(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate() = %v, want mention of %q", err, tc.want)
		}
	}
	c := Defaults()
	c.StateDir = "/tmp/x"
	if err := c.Validate(); err != nil {
		t.Errorf("defaults invalid: %v", err)
	}
}

// A plaintext gateway makes every caller an administrator: it may only listen on
// loopback, and the error names the fix.
func TestDisableTLSOnlyOnLoopback(t *testing.T) {
	for _, tc := range []struct {
		bind string
		ok   bool
	}{
		{"127.0.0.1", true}, {"127.0.0.53", true}, {"::1", true}, {"localhost", true},
		{"0.0.0.0", false}, {"::", false}, {"10.0.0.1", false}, {"192.168.1.2", false}, {"fe80::1", false},
	} {
		t.Run(tc.bind, func(t *testing.T) {
			c := Defaults()
			c.StateDir = t.TempDir()
			c.BindAddress = tc.bind
			c.DisableTLS = true
			err := c.Validate()
			if tc.ok {
				if err != nil {
					t.Fatalf("--disable-tls on %s refused: %v", tc.bind, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("--disable-tls on %s accepted", tc.bind)
			}
			for _, want := range []string{"disable_tls", tc.bind, "--bind-address 127.0.0.1", "drop --disable-tls"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
			// The same address with TLS is fine.
			c.DisableTLS = false
			if err := c.Validate(); err != nil {
				t.Errorf("TLS on %s refused: %v", tc.bind, err)
			}
		})
	}
}
