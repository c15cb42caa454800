package egress

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/openshell/openshell/internal/netguard"
	"github.com/openshell/openshell/supervisor/policy"
)

// TestSSRFGuardUsesSharedList: the supervisor's guard refuses an address of every
// range of the shared list (the VM runner's host-side check uses the same one) for an
// endpoint reached through a wildcard, NAT64 and 6to4 of an internal address among
// them, lets public addresses through, and adds the sandbox's own extra prefixes.
func TestSSRFGuardUsesSharedList(t *testing.T) {
	for _, r := range netguard.Ranges() {
		a := r.Prefix.Masked().Addr().Next()
		if !IsInternal(a, nil) {
			t.Errorf("%s (%s, %s) is not internal to the SSRF guard", a, r.Prefix, r.Name)
		}
	}
	for _, s := range []string{"64:ff9b::a9fe:a9fe", "64:ff9b:1::a00:1", "2002:a9fe:a9fe::1", "::ffff:169.254.169.254", "2001::1", "198.18.0.1", "100::1"} {
		if !IsInternal(netip.MustParseAddr(s), nil) {
			t.Errorf("%s is not internal to the SSRF guard", s)
		}
	}
	for _, s := range []string{"8.8.8.8", "2606:4700::1111", "2002:808:808::1"} {
		if IsInternal(netip.MustParseAddr(s), nil) {
			t.Errorf("public %s is internal to the SSRF guard", s)
		}
	}
	extra := []netip.Prefix{netip.MustParsePrefix("203.0.114.0/30")}
	if !IsInternal(netip.MustParseAddr("203.0.114.1"), extra) || IsInternal(netip.MustParseAddr("203.0.114.9"), extra) {
		t.Error("extra prefixes are not applied exactly")
	}

	// Through the proxy's resolver check: a wildcard endpoint whose name resolves to
	// a NAT64 address of the metadata service is refused, naming the address.
	p := &Proxy{cfg: Config{Resolver: staticResolver{"meta.example.com": {netip.MustParseAddr("64:ff9b::a9fe:a9fe")}}}}
	_, err := p.resolveChecked(context.Background(), "meta.example.com", 80, policy.Decision{Allow: true, Endpoint: "*.example.com"})
	if err == nil || !strings.Contains(err.Error(), "64:ff9b::a9fe:a9fe") {
		t.Errorf("wildcard to a NAT64 metadata address: %v; want refused", err)
	}
}
