package runner

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/openshell/openshell/internal/netguard"
	proxy "github.com/openshell/openshell/supervisor/egress"
	"github.com/openshell/openshell/supervisor/policy"
)

// The egress port serves the relay protocol of supervisor/egress (proxy.Relay, see
// supervisor/egress/relay.go), one HTTP/1.1 request per guest connection: CONNECT
// <ip>:<port> opens a tunnel, GET /v1/resolve?name= answers with the host's DNS (the
// guest has no network of its own), GET /v1/credentials gives the guest the
// placeholders of the sandbox's providers, and CONNECT with originated TLS carries a
// request the runner puts the real credential values into (see secrets.go: the
// values never enter the guest).
//
// The guest's supervisor enforces the sandbox's network policy in its proxy; the runner
// checks again outside the VM boundary, so a compromised guest gets no further: a
// destination or a looked-up name must be named by the sandbox's network policy
// (polled from the gateway, see policysync.go; 503 until it is known), and no address
// dialed or handed out may be the host's own or internal networks (loopback, private,
// link-local, CGNAT, multicast) unless the operator allows them (EgressPolicy).

// EgressPolicy is the host-side check on guest egress.
type EgressPolicy struct {
	// AllowPrivate lets guests reach loopback, private and link-local addresses.
	AllowPrivate bool `json:"allow_private,omitempty"`
	// AllowCIDRs are exceptions to the private-address rule (e.g. a LAN registry).
	AllowCIDRs []string `json:"allow_cidrs,omitempty"`
	// UpstreamCAFile is a PEM bundle trusted besides the system roots for the TLS
	// connections the runner makes itself (requests carrying provider credentials).
	UpstreamCAFile string `json:"upstream_ca_file,omitempty"`
	// RunnerCredential proves to the gateway that the caller is this sandbox's runner
	// (package hostcred): with it the runner receives the provider values the guest
	// never does. "" = no provider values (guests get no placeholders either).
	RunnerCredential string `json:"runner_credential,omitempty"`
}

// errRefused marks a destination the host-side policy refuses.
var errRefused = errors.New("refused by the VM driver's egress policy")

// Check returns nil when the guest may connect to ip.
func (p EgressPolicy) Check(ip netip.Addr) error {
	ip = ip.Unmap()
	if !ip.IsValid() || ip.IsUnspecified() || ip.IsMulticast() || ip.IsInterfaceLocalMulticast() {
		return fmt.Errorf("destination %s is not a unicast address: %w", ip, errRefused)
	}
	// The one list the guest's SSRF guard uses too (internal/netguard).
	r, internal := netguard.Lookup(ip)
	if !internal || p.AllowPrivate {
		return nil
	}
	for _, c := range p.AllowCIDRs {
		if pfx, err := netip.ParsePrefix(c); err == nil && pfx.Contains(ip) {
			return nil
		}
	}
	return fmt.Errorf("destination %s is a host-internal or special-purpose address (%s, %s): %w", ip, r.Prefix, r.Name, errRefused)
}

// Validate checks the CIDRs.
func (p EgressPolicy) Validate() error {
	for i, c := range p.AllowCIDRs {
		if _, err := netip.ParsePrefix(c); err != nil {
			return fmt.Errorf("egress.allow_cidrs[%d] %q: %w", i, c, err)
		}
	}
	return nil
}

// newEgressRelay is the server of the guest's egress port: the shared relay with the
// sandbox policy from src (nil until known: 503) and the static guard p, which
// replaces the relay's own SSRF guard. p is the operator's word on the host's internal
// networks, so a sandbox policy naming an internal address does not lift it.
// secrets (nil: none) holds the sandbox's credential store and upstream the TLS
// template of the connections the runner originates (see secrets.go).
func newEgressRelay(p EgressPolicy, src func() *policy.Compiled, secrets func() proxy.HostSecrets, upstream *tls.Config, log *slog.Logger) *proxy.Relay {
	return &proxy.Relay{
		Policy:      src,
		Guard:       func(ip netip.Addr, _ policy.Decision) error { return p.Check(ip) },
		Secrets:     secrets,
		UpstreamTLS: upstream,
		Logger:      log,
	}
}

func compileYAML(b []byte) (*policy.Compiled, error) {
	pol, err := policy.Parse(b)
	if err != nil {
		return nil, err
	}
	return policy.Compile(pol)
}
