package egress

import (
	"slices"

	"github.com/openshell/openshell/supervisor/policy"
)

// nameDecisions returns the allowing decisions on host for every port some endpoint
// of c lists, ports in ascending order; empty when no endpoint names the host. A name
// lookup carries neither the port the guest will connect to nor the calling binary
// (the host cannot see it), so a name may be looked up when any endpoint matches its
// host. Matching goes through Compiled.Destination, so hosts match exactly as they
// do for a CONNECT (exact names, one-label wildcards, IP literals).
func nameDecisions(c *policy.Compiled, host string) []policy.Decision {
	var ports []int
	for _, rule := range c.Policy().NetworkPolicies {
		if rule == nil {
			continue
		}
		for i := range rule.Endpoints {
			ports = append(ports, rule.Endpoints[i].EffectivePorts()...)
		}
	}
	slices.Sort(ports)
	var out []policy.Decision
	for _, port := range slices.Compact(ports) {
		if d := c.Destination(host, port); d.Allow {
			out = append(out, d)
		}
	}
	return out
}
