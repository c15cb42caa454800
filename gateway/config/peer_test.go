package config

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestPeerSettings(t *testing.T) {
	for _, tc := range []struct {
		name, listen, advertise, id string
		disableTLS                  bool
		wantAdvertise, wantErr      string
	}{
		{name: "single gateway", wantAdvertise: ""},
		{name: "specific listen address", listen: "10.0.0.5:17671", wantAdvertise: "10.0.0.5:17671"},
		{name: "default port", listen: "10.0.0.5", wantAdvertise: "10.0.0.5:17672"},
		{name: "all interfaces, pod IP", listen: "0.0.0.0:17671", advertise: "10.1.2.3:17671", id: "gw-0", wantAdvertise: "10.1.2.3:17671"},
		{name: "all interfaces without advertise", listen: "0.0.0.0:17671", wantErr: "or set peer_advertise_address"},
		{name: "advertise without listen", advertise: "10.1.2.3:17671", wantErr: "peer_advertise_address is set without peer_address"},
		{name: "bad port", listen: "10.0.0.5:70000", wantErr: "peer_address \"10.0.0.5:70000\": port"},
		{name: "plaintext", listen: "127.0.0.1:17671", disableTLS: true, wantErr: "drop --disable-tls"},
		{name: "bad replica id", listen: "10.0.0.5:1", id: "a b", wantErr: "replica_id \"a b\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Defaults()
			c.StateDir = "/x"
			c.PeerAddress, c.PeerAdvertiseAddress, c.ReplicaID, c.DisableTLS = tc.listen, tc.advertise, tc.id, tc.disableTLS
			err := c.Validate()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.listen == "" {
				return
			}
			if got, err := c.PeerAdvertise(); err != nil || got != tc.wantAdvertise {
				t.Errorf("PeerAdvertise = %q, %v; want %q", got, err, tc.wantAdvertise)
			}
		})
	}
}

func TestPeerFromEnvAndFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "gw.toml")
	writeFile(t, f, "peer_address = \"0.0.0.0:17671\"\nreplica_id = \"from-file\"\n")
	c, err := Resolve(nil, func(k string) string {
		switch k {
		case "OPENSHELL_GATEWAY_CONFIG":
			return f
		case "OPENSHELL_PEER_ADVERTISE_ADDRESS":
			return "10.9.8.7:17671"
		}
		return ""
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.PeerAddress != "0.0.0.0:17671" || c.ReplicaID != "from-file" || c.PeerAdvertiseAddress != "10.9.8.7:17671" {
		t.Errorf("peer %q id %q advertise %q", c.PeerAddress, c.ReplicaID, c.PeerAdvertiseAddress)
	}
}
