package clientconf

import (
	"errors"
	"testing"
)

func TestTargetAndDir(t *testing.T) {
	for ep, want := range map[string]struct {
		target string
		tls    bool
	}{
		"https://127.0.0.1:17670": {"127.0.0.1:17670", true},
		"http://localhost:1":      {"localhost:1", false},
		"10.0.0.1:17670":          {"10.0.0.1:17670", true},
	} {
		g := &Gateway{Name: "x", Endpoint: ep}
		got, tls, err := g.Target()
		if err != nil || got != want.target || tls != want.tls {
			t.Errorf("Target(%q) = %q %v %v", ep, got, tls, err)
		}
	}
	if _, _, err := (&Gateway{Endpoint: "ftp://x:1"}).Target(); err == nil {
		t.Error("ftp scheme accepted")
	}
	for _, bad := range []string{"../x", "a/b", ".."} {
		if _, err := Dir(bad); err == nil {
			t.Errorf("Dir(%q) accepted", bad)
		}
	}
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	if _, err := Load("nope"); !errors.Is(err, ErrNotConfigured) {
		t.Errorf("Load of an unknown gateway: %v", err)
	}
	if _, err := WriteEndpoint("dev", "https://127.0.0.1:1"); err != nil {
		t.Fatal(err)
	}
	g, err := Load("dev")
	if err != nil || g.Endpoint != "https://127.0.0.1:1" {
		t.Fatalf("Load = %+v, %v", g, err)
	}
}
