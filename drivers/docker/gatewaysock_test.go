package docker

import (
	"slices"
	"strings"
	"testing"

	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/supervisor/bootstrap"
)

// With a socket dir the container mounts it (read-only, the directory); without
// one it has no such mount.
func TestContainerConfigGatewaySocket(t *testing.T) {
	d := &Driver{cfg: Config{SupervisorBinary: "/bin/sup", Network: "openshell"}, gatewayIP: "172.30.0.1"}
	p := &plan{socketDir: "/run/openshell/abc/sb/0123", boot: bootstrap.Config{Endpoint: drivers.GatewaySocketEndpoint()}}
	_, host, _ := d.containerConfig(p, "/state")
	if want := "/run/openshell/abc/sb/0123:" + drivers.GatewaySocketMountDir + ":ro"; !slices.Contains(host.Binds, want) {
		t.Errorf("binds %v lack %s", host.Binds, want)
	}
	p.socketDir = ""
	_, host, _ = d.containerConfig(p, "/state")
	if strings.Contains(strings.Join(host.Binds, " "), drivers.GatewaySocketMountDir) {
		t.Errorf("without a socket: binds %v", host.Binds)
	}
}
