package egress

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/openshell/openshell/supervisor/policy"
)

// internalPrefixes are addresses an agent must not reach through a wildcard or a
// name it does not control: loopback, link-local (cloud metadata 169.254.169.254
// lives there), private and unique-local ranges (metadata fd00:ec2::254 among them),
// carrier-grade NAT, unspecified, multicast and reserved ranges.
var internalPrefixes = mustPrefixes(
	"0.0.0.0/8", "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
	"169.254.0.0/16", "100.64.0.0/10", "192.0.0.0/24", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
	"::/128", "::1/128", "fe80::/10", "fc00::/7", "ff00::/8", "64:ff9b:1::/48",
)

func mustPrefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// IsInternal reports whether a is an address the SSRF guard refuses by default.
func IsInternal(a netip.Addr, extra []netip.Prefix) bool {
	a = a.Unmap()
	for _, p := range internalPrefixes {
		if p.Contains(a) {
			return true
		}
	}
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
