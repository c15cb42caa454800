package netguard

import (
	"net/netip"
	"strings"
	"testing"
)

// lastAddr is the highest address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 1 << (7 - i%8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// TestEveryRange: the first and last address of every listed range, and the
// address in the middle, are internal and named by a range containing them (IPv4
// ranges also when written IPv4-mapped); the addresses just outside each range are
// public unless another listed range holds them.
func TestEveryRange(t *testing.T) {
	want := []string{
		"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
		"192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
		"198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
		"::/128", "::1/128", "64:ff9b::/96", "64:ff9b:1::/48", "::/8", "100::/64", "2001::/32",
		"2001:db8::/32", "2001::/23", "3fff::/20", "5f00::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
	}
	got := map[string]bool{}
	for _, r := range Ranges() {
		got[r.Prefix.String()] = true
	}
	for _, w := range want {
		if !got[w] {
			t.Errorf("range %s is missing from the list", w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d ranges listed, the test knows %d: add the new one to this table", len(got), len(want))
	}
	inAny := func(a netip.Addr) bool {
		for _, r := range Ranges() {
			if r.Prefix.Contains(a) {
				return true
			}
		}
		return false
	}
	for _, r := range Ranges() {
		t.Run(r.Prefix.String(), func(t *testing.T) {
			first, last := r.Prefix.Masked().Addr(), lastAddr(r.Prefix)
			mid := first
			if r.Prefix.Bits() < first.BitLen() {
				b := first.AsSlice()
				b[r.Prefix.Bits()/8] ^= 1 << (7 - r.Prefix.Bits()%8) // the top host bit
				mid, _ = netip.AddrFromSlice(b)
			}
			for _, a := range []netip.Addr{first, mid, last} {
				got, ok := Lookup(a)
				if !ok || !got.Prefix.Contains(a.Unmap()) || got.Name == "" {
					t.Errorf("Lookup(%s) = %+v, %v; want internal, named by a range holding it", a, got, ok)
				}
				if a.Is4() && !IsInternal(netip.AddrFrom16(a.As16())) {
					t.Errorf("%s is internal but its IPv4-mapped form is not", a)
				}
			}
			if prev := first.Prev(); prev.IsValid() && !inAny(prev) && !sixToFour.Contains(prev) && IsInternal(prev) {
				t.Errorf("%s just below %s is reported internal", prev, r.Prefix)
			}
			if next := last.Next(); next.IsValid() && !inAny(next) && !sixToFour.Contains(next) && IsInternal(next) {
				t.Errorf("%s just above %s is reported internal", next, r.Prefix)
			}
		})
	}
}

func TestAddresses(t *testing.T) {
	for _, tc := range []struct {
		addr     string
		internal bool
		name     string // part of the range name, when internal
	}{
		{"169.254.169.254", true, "metadata"},
		{"fd00:ec2::254", true, "unique-local"},
		{"::ffff:127.0.0.1", true, "loopback"},
		{"::ffff:169.254.169.254", true, "link-local"},
		{"::ffff:8.8.8.8", false, ""},
		{"64:ff9b::7f00:1", true, "NAT64"},       // NAT64 of 127.0.0.1
		{"64:ff9b::808:808", true, "NAT64"},      // NAT64 of a public address: refused whole
		{"64:ff9b:1:2::1", true, "NAT64 (local"}, // local-use NAT64
		{"2002:7f00:1::1", true, "6to4 of 127.0.0.1"},
		{"2002:a9fe:a9fe::", true, "6to4 of 169.254.169.254"},
		{"2002:c0a8:101::5", true, "6to4 of 192.168.1.1"},
		{"2002:808:808::1", false, ""}, // 6to4 of a public address
		{"2001:0:4136:e378:8000:63bf:3fff:fdd2", true, "Teredo"},
		{"2001:db8::1", true, "documentation"},
		{"::7f00:1", true, "reserved"},        // IPv4-compatible 127.0.0.1
		{"::ffff:0:7f00:1", true, "reserved"}, // IPv4-translated 127.0.0.1
		{"100::1", true, "discard"},
		{"fe80::1%eth0", true, "link-local"},
		{"ff02::1", true, "multicast"},
		{"255.255.255.255", true, "reserved"},
		{"100.127.255.255", true, "carrier-grade"},
		{"100.128.0.0", false, ""},
		{"8.8.8.8", false, ""},
		{"93.184.216.34", false, ""},
		{"2606:4700::1111", false, ""},
		{"2a00:1450:4001::200e", false, ""},
		{"2001:200::1", false, ""}, // just past 2001::/23: ordinary global unicast
	} {
		a := netip.MustParseAddr(tc.addr)
		r, ok := Lookup(a)
		if ok != tc.internal || (ok && !strings.Contains(r.Name, tc.name)) {
			t.Errorf("Lookup(%s) = %q, %v; want internal=%v naming %q", tc.addr, r.Name, ok, tc.internal, tc.name)
		}
		if IsInternal(a) != tc.internal {
			t.Errorf("IsInternal(%s) = %v", tc.addr, !tc.internal)
		}
	}
	if !IsInternal(netip.Addr{}) {
		t.Error("the zero Addr is not internal")
	}
}

// FuzzLookup: for any 16 bytes, the IPv6 form and its unmapped form agree, a
// reported range contains the address (or, for 6to4, its embedded IPv4 address is
// internal), and an address outside every range and not 6to4 is public.
func FuzzLookup(f *testing.F) {
	f.Add([]byte(netip.MustParseAddr("::ffff:10.0.0.1").AsSlice()))
	f.Add([]byte(netip.MustParseAddr("2002:7f00:1::1").AsSlice()))
	f.Add([]byte(netip.MustParseAddr("64:ff9b::1").AsSlice()))
	f.Add([]byte(netip.MustParseAddr("2606:4700::1111").AsSlice()))
	f.Fuzz(func(t *testing.T, b []byte) {
		var a16 [16]byte
		copy(a16[:], b)
		a := netip.AddrFrom16(a16)
		r, ok := Lookup(a)
		if ok2 := IsInternal(a.Unmap()); ok2 != ok {
			t.Fatalf("%s internal=%v but unmapped %s internal=%v", a, ok, a.Unmap(), ok2)
		}
		u := a.Unmap()
		inAny := false
		for _, x := range ranges {
			inAny = inAny || x.Prefix.Contains(u)
		}
		switch {
		case inAny && (!ok || !r.Prefix.Contains(u)):
			t.Fatalf("%s is in a listed range but Lookup = %+v, %v", a, r, ok)
		case !inAny && ok:
			if !sixToFour.Contains(u) {
				t.Fatalf("%s reported internal (%+v) outside every range", a, r)
			}
			inner := netip.AddrFrom4([4]byte{a16[2], a16[3], a16[4], a16[5]})
			if !IsInternal(inner) {
				t.Fatalf("6to4 %s reported internal but embeds public %s", a, inner)
			}
		case !inAny && !ok && sixToFour.Contains(u):
			inner := netip.AddrFrom4([4]byte{a16[2], a16[3], a16[4], a16[5]})
			if IsInternal(inner) {
				t.Fatalf("6to4 %s embeds internal %s but is reported public", a, inner)
			}
		}
	})
}
