package egress

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/openshell/openshell/internal/netguard"
	"github.com/openshell/openshell/supervisor/policy"
)

// IsInternal reports whether a is an address the SSRF guard refuses by default: one
// of the shared internal and special-purpose ranges (internal/netguard: loopback,
// link-local with cloud metadata 169.254.169.254, private and unique-local with
// fd00:ec2::254, carrier-grade NAT, NAT64, 6to4 of an internal address, Teredo,
// documentation, benchmarking, multicast, reserved), or one of extra.
func IsInternal(a netip.Addr, extra []netip.Prefix) bool {
	if netguard.IsInternal(a) {
		return true
	}
	a = a.Unmap()
	for _, p := range extra {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// resolveChecked resolves host and returns the first address the decision permits.
// With allowed_ips on the endpoint the address must lie inside them; otherwise
// internal addresses need an endpoint that names the host or IP exactly.
func (p *Proxy) resolveChecked(ctx context.Context, host string, port int, d policy.Decision) (netip.AddrPort, error) {
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")); err == nil {
		addrs = []netip.Addr{a.Unmap().WithZone("")}
	} else {
		addrs, err = p.cfg.Resolver.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("cannot resolve %s: %w", host, err)
		}
	}
	var refused []string
	for _, a := range addrs {
		a = a.Unmap().WithZone("")
		switch {
		case len(d.AllowedIPs) > 0:
			if containsAddr(d.AllowedIPs, a) {
				return netip.AddrPortFrom(a, uint16(port)), nil
			}
			refused = append(refused, a.String()+" (not in allowed_ips of "+d.Endpoint+")")
		case IsInternal(a, p.cfg.InternalPrefixes) && !d.Explicit:
			refused = append(refused, a.String()+" (internal address; name it exactly as an endpoint host or list it in allowed_ips)")
		default:
			return netip.AddrPortFrom(a, uint16(port)), nil
		}
	}
	if len(refused) == 0 {
		return netip.AddrPort{}, fmt.Errorf("%s has no addresses", host)
	}
	return netip.AddrPort{}, fmt.Errorf("SSRF guard: %s resolves to %s", host, strings.Join(refused, ", "))
}

func containsAddr(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
