package session

import "testing"

func TestParseUnixEndpoint(t *testing.T) {
	ep, err := ParseEndpoint("unix:///run/openshell/gateway/gateway.sock")
	if err != nil || ep.Socket != "/run/openshell/gateway/gateway.sock" || ep.Secure {
		t.Fatalf("unix endpoint = %+v, %v; want the socket path, plaintext", ep, err)
	}
	for _, bad := range []string{"unix://relative/gw.sock", "unix://"} {
		if _, err := ParseEndpoint(bad); err == nil {
			t.Errorf("ParseEndpoint(%q) accepted", bad)
		}
	}
}
