package hostcred

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDeriveVerify(t *testing.T) {
	k1 := []byte("0123456789abcdef0123456789abcdef")
	k2 := []byte("fedcba9876543210fedcba9876543210")
	c := Derive(k1, "sb-1")
	if len(c) != 64 {
		t.Fatalf("credential %q is not 64 hex digits", c)
	}
	for _, tc := range []struct {
		name string
		key  []byte
		id   string
		cred string
		want bool
	}{
		{"own sandbox", k1, "sb-1", c, true},
		{"other sandbox", k1, "sb-2", c, false},
		{"other key", k2, "sb-1", c, false},
		{"empty credential", k1, "sb-1", "", false},
		{"no key", nil, "sb-1", Derive(nil, "sb-1"), false},
		{"truncated", k1, "sb-1", c[:63], false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Verify(tc.key, tc.id, tc.cred); got != tc.want {
				t.Fatalf("Verify = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestLoadOrCreate(t *testing.T) {
	p := filepath.Join(t.TempDir(), "d", KeyFile)
	k, err := LoadOrCreate(p)
	if err != nil || len(k) != keySize {
		t.Fatalf("create: %v (%d bytes)", err, len(k))
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
	k2, err := LoadOrCreate(p)
	if err != nil || string(k2) != string(k) {
		t.Fatalf("second load gave another key (%v)", err)
	}
	os.Chmod(p, 0o644)
	if _, err := LoadOrCreate(p); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a world-readable key was accepted: %v", err)
	}
	os.Chmod(p, 0o600)
	os.WriteFile(p, []byte("short"), 0o600)
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "bytes") {
		t.Fatalf("a short key was accepted: %v", err)
	}
}
