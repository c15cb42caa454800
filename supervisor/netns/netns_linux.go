// Package netns gives the agent of a container sandbox its own network namespace
// whose only way out is the supervisor's egress proxy: a veth pair (the supervisor
// keeps the host end, the agent's namespace gets the other end with one address and
// a default route through it), and nftables in the agent's namespace that accept only
// TCP to the proxy's address and port (plus loopback and replies), count everything
// else and refuse it at once (TCP reset, ICMP administratively prohibited), so that a
// tool bypassing the proxy fails fast instead of hanging, and the refusal is visible.
//
// Wiring: the supervisor calls New at start (as root, in its own namespace), serves
// the egress proxy on ProxyAddr(), starts the agent (and every exec/ssh session meant
// to run "inside" the sandbox) with Start, identifies clients with
// egress.ProcIdentifier{InNetNS: n.Do}, polls Denied() for the log, and calls Close
// at shutdown.
package netns

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"runtime"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Config describes the agent's link.
type Config struct {
	HostLink  string       // host-side veth name (default "osh-veth0"; ≤ 15 bytes)
	AgentLink string       // name inside the agent namespace (default "eth0")
	HostAddr  netip.Prefix // host side, where the proxy listens (default 10.200.0.1/30)
	AgentAddr netip.Prefix // agent side (default 10.200.0.2/30)
	ProxyPort uint16       // the proxy's TCP port (default 3128)
	MTU       int          // 0 = kernel default
}

func (c *Config) fill() {
	if c.HostLink == "" {
		c.HostLink = "osh-veth0"
	}
	if c.AgentLink == "" {
		c.AgentLink = "eth0"
	}
	if !c.HostAddr.IsValid() {
		c.HostAddr = netip.MustParsePrefix("10.200.0.1/30")
	}
	if !c.AgentAddr.IsValid() {
		c.AgentAddr = netip.MustParsePrefix("10.200.0.2/30")
	}
	if c.ProxyPort == 0 {
		c.ProxyPort = 3128
	}
}

// Validate names the first bad field.
func (c *Config) Validate() error {
	switch {
	case len(c.HostLink) > 15 || len(c.AgentLink) > 15:
		return fmt.Errorf("netns: link names %q/%q: at most 15 bytes", c.HostLink, c.AgentLink)
	case !c.HostAddr.Addr().Is4() || !c.AgentAddr.Addr().Is4():
		return errors.New("netns: HostAddr and AgentAddr must be IPv4 prefixes such as 10.200.0.1/30")
	case c.HostAddr.Masked() != c.AgentAddr.Masked():
		return fmt.Errorf("netns: HostAddr %s and AgentAddr %s must share one subnet", c.HostAddr, c.AgentAddr)
	case c.HostAddr.Addr() == c.AgentAddr.Addr():
		return errors.New("netns: HostAddr and AgentAddr are the same address")
	}
	return nil
}

// Net is the agent's network namespace and its veth.
type Net struct {
	cfg  Config
	ns   netns.NsHandle
	host netlink.Link
}

const (
	tableName   = "openshell"
	counterName = "denied"
)

// New creates the namespace, the veth pair and the firewall. It must run as root
// (CAP_NET_ADMIN, CAP_SYS_ADMIN) in the namespace that will hold the host end.
func New(cfg Config) (n *Net, retErr error) {
	cfg.fill()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("netns: current namespace: %w", err)
	}
	defer orig.Close()
	agent, err := netns.New() // also switches this thread into it
	if err != nil {
		return nil, fmt.Errorf("netns: create agent namespace: %w", err)
	}
	if err := netns.Set(orig); err != nil {
		agent.Close()
		// This thread is stuck in the wrong namespace: do not let Go reuse it.
		runtime.LockOSThread()
		return nil, fmt.Errorf("netns: return to the supervisor namespace: %w", err)
	}
	n = &Net{cfg: cfg, ns: agent}
	defer func() {
		if retErr != nil {
			n.Close()
		}
	}()

	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: cfg.HostLink, MTU: cfg.MTU},
		PeerName: cfg.AgentLink, PeerNamespace: netlink.NsFd(int(agent))}
	if err := netlink.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("netns: create veth %s: %w (is a link of that name left over? delete it or choose Config.HostLink)", cfg.HostLink, err)
	}
	host, err := netlink.LinkByName(cfg.HostLink)
	if err != nil {
		return nil, fmt.Errorf("netns: find %s: %w", cfg.HostLink, err)
	}
	n.host = host
	if err := netlink.AddrAdd(host, &netlink.Addr{IPNet: ipnet(cfg.HostAddr)}); err != nil {
		return nil, fmt.Errorf("netns: address %s on %s: %w", cfg.HostAddr, cfg.HostLink, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return nil, fmt.Errorf("netns: up %s: %w", cfg.HostLink, err)
	}

	h, err := netlink.NewHandleAt(agent)
	if err != nil {
		return nil, fmt.Errorf("netns: netlink in agent namespace: %w", err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		return nil, fmt.Errorf("netns: loopback in agent namespace: %w", err)
	}
	peer, err := h.LinkByName(cfg.AgentLink)
	if err != nil {
		return nil, fmt.Errorf("netns: find %s in agent namespace: %w", cfg.AgentLink, err)
	}
	if err := h.AddrAdd(peer, &netlink.Addr{IPNet: ipnet(cfg.AgentAddr)}); err != nil {
		return nil, fmt.Errorf("netns: address %s on %s: %w", cfg.AgentAddr, cfg.AgentLink, err)
	}
	if err := h.LinkSetUp(peer); err != nil {
		return nil, fmt.Errorf("netns: up %s: %w", cfg.AgentLink, err)
	}
	// A default route through the host end: every destination reaches the firewall
	// (and is refused and counted there) instead of failing with ENETUNREACH unseen.
	gw := net.IP(cfg.HostAddr.Addr().AsSlice())
	if err := h.RouteAdd(&netlink.Route{LinkIndex: peer.Attrs().Index, Gw: gw}); err != nil {
		return nil, fmt.Errorf("netns: default route via %s: %w", gw, err)
	}
	if err := n.firewall(); err != nil {
		return nil, err
	}
	return n, nil
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// firewall installs table inet openshell in the agent namespace:
//
//	output (policy drop): lo accept; ct established,related accept;
//	  ip daddr PROXY tcp dport PORT accept; tcp → counter, reset; rest → counter, icmpx admin-prohibited
//	input (policy drop): lo accept; ct established,related accept; counter
func (n *Net) firewall() error {
	c, err := nftables.New(nftables.WithNetNSFd(int(n.ns)))
	if err != nil {
		return fmt.Errorf("netns: nftables in agent namespace: %w", err)
	}
	drop := nftables.ChainPolicyDrop
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: tableName})
	c.AddObj(&nftables.CounterObj{Table: t, Name: counterName})
	out := c.AddChain(&nftables.Chain{Name: "output", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &drop})
	in := c.AddChain(&nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &drop})
	accept := &expr.Verdict{Kind: expr.VerdictAccept}
	count := &expr.Objref{Type: unix.NFT_OBJECT_COUNTER, Name: counterName}
	loopback := func(key expr.MetaKey) []expr.Any {
		return []expr.Any{&expr.Meta{Key: key, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname("lo")}, accept}
	}
	established := []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: nativeUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
		accept,
	}
	proxyIP := n.cfg.HostAddr.Addr().As4()
	toProxy := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: proxyIP[:]},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(n.cfg.ProxyPort >> 8), byte(n.cfg.ProxyPort)}},
		accept,
	}
	tcpReset := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		count,
		&expr.Reject{Type: unix.NFT_REJECT_TCP_RST},
	}
	otherReject := []expr.Any{count, &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED}}
	for _, r := range [][]expr.Any{loopback(expr.MetaKeyOIFNAME), established, toProxy, tcpReset, otherReject} {
		c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: r})
	}
	for _, r := range [][]expr.Any{loopback(expr.MetaKeyIIFNAME), established, {count}} {
		c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: r})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netns: install nftables rules in agent namespace: %w", err)
	}
	return nil
}

func ifname(s string) []byte {
	b := make([]byte, 16)
	copy(b, s)
	return b
}

func nativeUint32(v uint32) []byte {
	return binary.NativeEndian.AppendUint32(nil, v)
}

// ProxyAddr is where the proxy must listen (host side) and where the agent's
// HTTP_PROXY points.
func (n *Net) ProxyAddr() netip.AddrPort {
	return netip.AddrPortFrom(n.cfg.HostAddr.Addr(), n.cfg.ProxyPort)
}

// Handle is the namespace file descriptor (valid until Close).
func (n *Net) Handle() netns.NsHandle { return n.ns }

// Do runs fn on a thread inside the agent namespace (sockets fn creates stay there).
func (n *Net) Do(fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns: current namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(n.ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns: enter agent namespace: %w", err)
	}
	fnErr := fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: Go must not reuse a thread in the wrong namespace.
		return errors.Join(fnErr, fmt.Errorf("netns: leave agent namespace: %w", err))
	}
	runtime.UnlockOSThread()
	return fnErr
}

// Start starts cmd inside the agent namespace: the child is forked from a thread
// that has entered it, and keeps it across exec.
func (n *Net) Start(cmd *exec.Cmd) error {
	return n.Do(cmd.Start)
}

// Denied reads the counter of refused packets (both directions).
func (n *Net) Denied() (packets, bytes uint64, err error) {
	c, err := nftables.New(nftables.WithNetNSFd(int(n.ns)))
	if err != nil {
		return 0, 0, err
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: tableName}
	o, err := c.GetObject(&nftables.CounterObj{Table: t, Name: counterName})
	if err != nil {
		return 0, 0, fmt.Errorf("netns: read counter %s: %w", counterName, err)
	}
	co, ok := o.(*nftables.CounterObj)
	if !ok {
		return 0, 0, fmt.Errorf("netns: counter %s has type %T", counterName, o)
	}
	return co.Packets, co.Bytes, nil
}

// Close deletes the veth (both ends) and releases the namespace; it disappears once
// no process is left in it.
func (n *Net) Close() error {
	var errs []error
	if n.host != nil {
		if err := netlink.LinkDel(n.host); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("netns: delete %s: %w", n.cfg.HostLink, err))
		}
		n.host = nil
	}
	if n.ns.IsOpen() {
		if err := n.ns.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
