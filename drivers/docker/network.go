package docker

import (
	"context"
	"fmt"
	"maps"

	"github.com/moby/moby/client"
)

// ensureNetwork makes sure the sandbox bridge network exists (labelled managed-by so
// it can be told apart from the user's networks) and returns its gateway address:
// the host side of the bridge, where the forwarder listens and which
// host.openshell.internal resolves to inside sandboxes.
func (d *Driver) ensureNetwork(ctx context.Context) (string, error) {
	name := d.cfg.Network
	res, err := d.cli.NetworkInspect(ctx, name, client.NetworkInspectOptions{})
	if isNotFound(err) {
		labels := map[string]string{LabelManagedBy: ManagedByValue}
		maps.Copy(labels, d.cfg.Labels)
		_, err = d.cli.NetworkCreate(ctx, name, client.NetworkCreateOptions{Driver: "bridge", Labels: labels})
		if err != nil && !isConflict(err) { // conflict: another gateway created it meanwhile
			return "", d.wrap(err, "create network "+name)
		}
		d.log.Info("created sandbox network", "network", name)
		res, err = d.cli.NetworkInspect(ctx, name, client.NetworkInspectOptions{})
	}
	if err != nil {
		return "", d.wrap(err, "inspect network "+name)
	}
	nw := res.Network
	if nw.Driver != "bridge" {
		return "", fmt.Errorf("docker driver: network %q has driver %q, want bridge; remove it or set the driver's network to another name", name, nw.Driver)
	}
	if nw.Labels[LabelManagedBy] != ManagedByValue {
		d.log.Warn("sandbox network was not created by openshell; using it anyway", "network", name)
	}
	for _, c := range nw.IPAM.Config {
		if c.Gateway.IsValid() && c.Gateway.Is4() {
			return c.Gateway.String(), nil
		}
	}
	return "", fmt.Errorf("docker driver: network %q has no IPv4 gateway address; remove it (docker network rm %s) so the driver re-creates it", name, name)
}
