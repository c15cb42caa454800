package podman

import (
	"testing"

	"github.com/openshell/openshell/drivers"
)

// With a socket dir the sandbox mounts it and has no host loopback; without one
// slirp4netns shows the loopback, where the gateway listens.
func TestSpecGatewaySocket(t *testing.T) {
	d := &Driver{cfg: Config{SupervisorBinary: "/bin/sup"}}
	s := d.spec(&plan{socketDir: "/run/openshell/abc/sb/0123"}, "/state")
	found := false
	for _, m := range s.Mounts {
		if m.Destination == drivers.GatewaySocketMountDir && m.Source == "/run/openshell/abc/sb/0123" && m.Options[0] == "ro" {
			found = true
		}
	}
	if !found {
		t.Errorf("mounts %+v lack the socket dir, read-only", s.Mounts)
	}
	if len(s.HostAdd) != 1 || s.HostAdd[0] != drivers.GatewayHost+":host-gateway" || s.NetworkOptions != nil {
		t.Errorf("host add %v, network options %v with a socket: the host loopback must stay closed", s.HostAdd, s.NetworkOptions)
	}
	s = d.spec(&plan{}, "/state")
	if got := s.NetworkOptions["slirp4netns"]; len(got) != 1 || got[0] != "allow_host_loopback=true" || len(s.HostAdd) != 1 {
		t.Errorf("without a socket: network options %v, host add %v", s.NetworkOptions, s.HostAdd)
	}
}
