package clientconf

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestUnixPath(t *testing.T) {
	for ep, want := range map[string]string{
		"unix:///run/openshell/a/gateway.sock": "/run/openshell/a/gateway.sock",
		"unix:/tmp/g.sock":                     "/tmp/g.sock",
		"unix://relative.sock":                 "",
		"https://127.0.0.1:17670":              "",
		"":                                     "",
	} {
		got, ok := unixPath(ep)
		if (want == "") == ok || (ok && got != want) {
			t.Errorf("unixPath(%q) = %q %v, want %q", ep, got, ok, want)
		}
	}
}

// The socket record is written and removed by WriteSocket and read by Load; a socket
// path with no listener (a stopped gateway) falls back to the endpoint, while a
// registration whose endpoint is the socket itself reports the failure.
func TestSocketRecordAndFallback(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", tmp)
	if _, err := WriteEndpoint("g", "http://127.0.0.1:1"); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(tmp, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close() // the file stays, nobody listens: ECONNREFUSED
	if err := WriteSocket("g", stale); err != nil {
		t.Fatal(err)
	}
	g, err := Load("g")
	if err != nil || g.Socket != "unix://"+stale {
		t.Fatalf("Load = %+v, %v", g, err)
	}
	cc, err := g.Dial(t.Context())
	if err != nil {
		t.Fatalf("stale socket did not fall back to the endpoint: %v", err)
	}
	if tgt := cc.Target(); !strings.Contains(tgt, "127.0.0.1:1") {
		t.Errorf("fell back to %q, want the endpoint", tgt)
	}
	cc.Close()

	only := &Gateway{Name: "u", Endpoint: "unix://" + stale}
	if _, err := only.Dial(t.Context()); err == nil || !strings.Contains(err.Error(), "is the gateway running") {
		t.Errorf("unix-only registration with no listener: %v", err)
	}

	if err := WriteSocket("g", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(g.Dir, SocketFile)); !os.IsNotExist(err) {
		t.Errorf("socket record not removed: %v", err)
	}
	if g, _ := Load("g"); g.Socket != "" {
		t.Errorf("Socket = %q after removal", g.Socket)
	}
}
