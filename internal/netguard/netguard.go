// Package netguard is the one list of addresses an agent's egress must not reach by
// default: the host's own and internal networks, and every IANA special-purpose block
// that is not an ordinary public unicast destination. The supervisor's SSRF guard and
// the VM runner's host-side egress check both ask it, so the two ends of a VM sandbox
// can never disagree on what "internal" means.
//
// Addresses that carry an IPv4 address inside an IPv6 one are judged by what they
// lead to: IPv4-mapped addresses (::ffff:0:0/96) are unmapped first, and a 6to4
// address (2002::/16) is internal when the IPv4 address it embeds is. NAT64 prefixes
// and Teredo are refused whole: a translator or relay on the path may lead anywhere,
// including to the host's own networks.
package netguard

import (
	"net/netip"
)

// Range is one special-purpose block and what it is for.
type Range struct {
	Prefix netip.Prefix
	Name   string
}

// ranges is ordered so that a narrower, better-known block is named before the
// broader one containing it (NAT64 before ::/8, Teredo before 2001::/23).
var ranges = mustRanges(
	// IPv4 (IANA IPv4 Special-Purpose Address Registry, plus multicast and class E).
	"0.0.0.0/8", "this network",
	"10.0.0.0/8", "private",
	"100.64.0.0/10", "carrier-grade NAT",
	"127.0.0.0/8", "loopback",
	"169.254.0.0/16", "link-local (cloud metadata)",
	"172.16.0.0/12", "private",
	"192.0.0.0/24", "IETF protocol assignments",
	"192.0.2.0/24", "documentation (TEST-NET-1)",
	"192.88.99.0/24", "6to4 relay anycast",
	"192.168.0.0/16", "private",
	"198.18.0.0/15", "benchmarking",
	"198.51.100.0/24", "documentation (TEST-NET-2)",
	"203.0.113.0/24", "documentation (TEST-NET-3)",
	"224.0.0.0/4", "multicast",
	"240.0.0.0/4", "reserved (class E and broadcast)",
	// IPv6 (IANA IPv6 Special-Purpose Address Registry, plus multicast).
	"::/128", "unspecified",
	"::1/128", "loopback",
	"64:ff9b::/96", "NAT64 (well-known prefix)",
	"64:ff9b:1::/48", "NAT64 (local use)",
	"::/8", "reserved (IPv4-compatible and IPv4-translated among them)",
	"100::/64", "discard-only",
	"2001::/32", "Teredo",
	"2001:db8::/32", "documentation",
	"2001::/23", "IETF protocol assignments",
	"3fff::/20", "documentation",
	"5f00::/16", "segment routing (SRv6) SIDs",
	"fc00::/7", "unique-local (cloud metadata fd00:ec2::254 among them)",
	"fe80::/10", "link-local",
	"fec0::/10", "site-local (deprecated)",
	"ff00::/8", "multicast",
)

// sixToFour is 2002::/16: the 32 bits after the prefix are an IPv4 address.
var sixToFour = netip.MustParsePrefix("2002::/16")

func mustRanges(kv ...string) []Range {
	out := make([]Range, 0, len(kv)/2)
	for i := 0; i < len(kv); i += 2 {
		out = append(out, Range{Prefix: netip.MustParsePrefix(kv[i]), Name: kv[i+1]})
	}
	return out
}

// Ranges returns a copy of the list.
func Ranges() []Range { return append([]Range(nil), ranges...) }

// Lookup returns the special-purpose range a falls in. ok is false for an ordinary
// public unicast address. An invalid address is reported as internal ("invalid").
func Lookup(a netip.Addr) (r Range, ok bool) {
	if !a.IsValid() {
		return Range{Name: "invalid address"}, true
	}
	a = a.WithZone("").Unmap()
	for _, r := range ranges {
		if r.Prefix.Contains(a) {
			return r, true
		}
	}
	if sixToFour.Contains(a) {
		b := a.As16()
		v4 := netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]})
		if inner, ok := Lookup(v4); ok {
			return Range{Prefix: sixToFour, Name: "6to4 of " + v4.String() + " (" + inner.Name + ")"}, true
		}
	}
	return Range{}, false
}

// IsInternal reports whether a is in the list (see Lookup).
func IsInternal(a netip.Addr) bool {
	_, ok := Lookup(a)
	return ok
}
