package podman

import (
	"context"
	"fmt"
	"maps"
	"net/netip"

	"github.com/openshell/openshell/drivers"
)

// ensureNetwork makes sure the rootful sandbox bridge network exists (labelled
// managed-by) and returns its gateway address: the host side of the bridge, which
// host.openshell.internal resolves to inside sandboxes.
func (d *Driver) ensureNetwork(ctx context.Context) (string, error) {
	name := d.cfg.Network
	nw, err := d.cli.networkInspect(ctx, name)
	if isNotFound(err) {
		labels := map[string]string{drivers.LabelManagedBy: drivers.ManagedByValue}
		maps.Copy(labels, d.cfg.Labels)
		err = d.cli.networkCreate(ctx, name, labels)
		if err != nil && statusOf(err) != 409 { // 409: another gateway created it meanwhile
			return "", d.wrap(err, "create network "+name)
		}
		d.log.Info("created sandbox network", "network", name)
		nw, err = d.cli.networkInspect(ctx, name)
	}
	if err != nil {
		return "", d.wrap(err, "inspect network "+name)
	}
	if nw.Driver != "bridge" {
		return "", fmt.Errorf("podman driver: network %q has driver %q, want bridge; remove it (podman network rm %s) or set the driver's network to another name", name, nw.Driver, name)
	}
	if nw.Labels[drivers.LabelManagedBy] != drivers.ManagedByValue {
		d.log.Warn("sandbox network was not created by openshell; using it anyway", "network", name)
	}
	for _, s := range nw.Subnets {
		if a, err := netip.ParseAddr(s.Gateway); err == nil && a.Is4() {
			return a.String(), nil
		}
	}
	return "", fmt.Errorf("podman driver: network %q has no IPv4 gateway address; remove it (podman network rm %s) so the driver re-creates it", name, name)
}
