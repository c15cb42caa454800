package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCopy: files land with the asked mode under new 0700 directories, replacing what
// was there; bad arguments are refused naming the fix and copy nothing.
func TestCopy(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "ca.key")
	if err := os.WriteFile(src, []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "state", "pki", "ca.key")
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "fresh", "sub", "gateway-id")
	if err := run("0600", []string{src + "=" + dst, src + "=" + other}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dst, other} {
		b, err := os.ReadFile(p)
		fi, _ := os.Stat(p)
		if err != nil || string(b) != "new" || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %q mode %v (%v), want \"new\" 0600", p, b, fi.Mode().Perm(), err)
		}
	}
	if fi, _ := os.Stat(filepath.Dir(other)); fi.Mode().Perm() != 0o700 {
		t.Errorf("new directory mode %v, want 0700", fi.Mode().Perm())
	}

	for _, tc := range []struct {
		mode string
		args []string
		want string
	}{
		{"0600", nil, "nothing to copy"},
		{"rw", []string{src + "=" + dst}, "-mode"},
		{"0600", []string{src + "=relative"}, "absolute DST"},
		{"0600", []string{"no-equals"}, "SRC=DST"},
		{"0600", []string{filepath.Join(dir, "missing") + "=" + filepath.Join(dir, "x")}, "read"},
	} {
		err := run(tc.mode, tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("run(%q, %q) = %v, want an error naming %q", tc.mode, tc.args, err, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); err == nil {
		t.Error("a failed copy wrote its destination")
	}
}
