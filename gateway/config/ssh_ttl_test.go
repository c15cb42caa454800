package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func resolveWith(t *testing.T, args []string, env map[string]string) (*Config, error) {
	t.Helper()
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return Resolve(fs, func(k string) string { return env[k] })
}

func TestSSHSessionTTL(t *testing.T) {
	file := filepath.Join(t.TempDir(), "gw.toml")
	if err := os.WriteFile(file, []byte("ssh_session_ttl = \"15m\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want time.Duration
	}{
		{"default", nil, nil, time.Hour},
		{"toml", []string{"--config", file}, nil, 15 * time.Minute},
		{"env over toml", []string{"--config", file}, map[string]string{"OPENSHELL_SSH_SESSION_TTL": "2s"}, 2 * time.Second},
		{"flag over env", []string{"--config", file, "--ssh-session-ttl", "90s"}, map[string]string{"OPENSHELL_SSH_SESSION_TTL": "2s"}, 90 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := resolveWith(t, tc.args, tc.env)
			if err != nil {
				t.Fatal(err)
			}
			if c.SSHSessionTTL != tc.want {
				t.Errorf("SSHSessionTTL = %v, want %v", c.SSHSessionTTL, tc.want)
			}
			if err := c.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
		})
	}
}

func TestSSHSessionTTLRefused(t *testing.T) {
	if _, err := resolveWith(t, nil, map[string]string{"OPENSHELL_SSH_SESSION_TTL": "soon"}); err == nil ||
		!strings.Contains(err.Error(), "OPENSHELL_SSH_SESSION_TTL") || !strings.Contains(err.Error(), "ssh_session_ttl") {
		t.Errorf("a non-duration must name the variable and key, got %v", err)
	}
	for _, v := range []string{"500ms", "0s", "-1h"} {
		c, err := resolveWith(t, []string{"--ssh-session-ttl", v}, nil)
		if err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "ssh_session_ttl") {
			t.Errorf("ttl %s: Validate must name ssh_session_ttl, got %v", v, err)
		}
	}
}

// FuzzSSHSessionTTL: any string either fails to parse with an error naming the key, or
// yields a TTL that Validate accepts exactly when it is at least a second.
func FuzzSSHSessionTTL(f *testing.F) {
	for _, s := range []string{"1h", "2s", "999ms", "", " 3m ", "-5s", "1e9", "9999999999h"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		c := Defaults()
		c.StateDir = "/var/lib/openshell" // keep the other fields valid whatever HOME is
		if err := setString(&c, "ssh_session_ttl", v); err != nil {
			if !strings.Contains(err.Error(), "ssh_session_ttl") {
				t.Fatalf("error does not name the key: %v", err)
			}
			return
		}
		err := c.Validate()
		if (c.SSHSessionTTL >= time.Second) != (err == nil) {
			t.Fatalf("ttl %v: Validate = %v", c.SSHSessionTTL, err)
		}
	})
}
