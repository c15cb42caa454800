package egress

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/openshell/openshell/supervisor/policy"
)

// VM egress: a guest has no network interface, so its proxy's upstream connections
// travel over vsock to the VM's runner on the host, which checks the destination
// against the policy again (outside the VM boundary) and dials it.
//
// Per connection, guest → runner: one line "OPENSHELL-DIAL <host> <ip>:<port>\n"
// (host as the agent asked for it, the address the guest proxy resolved and checked);
// runner → guest: "OK\n" or "ERR <reason>\n"; then raw bytes both ways.

const relayMagic = "OPENSHELL-DIAL"

// RelayDialer returns a Config.Dial for the guest proxy: open(ctx) opens a fresh
// stream to the runner (e.g. a vsock connection to the host's egress port), and the
// returned function asks the runner for addr on it. The host name travels too (from
// WithHost), so the runner can match host-based endpoints.
func RelayDialer(open func(ctx context.Context) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if network != "tcp" && network != "tcp4" && network != "tcp6" {
			return nil, fmt.Errorf("egress relay: network %q: only tcp is relayed", network)
		}
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return nil, fmt.Errorf("egress relay: %q is not IP:port: %w", addr, err)
		}
		host, _ := ctx.Value(hostKey{}).(string)
		if host == "" {
			host = ap.Addr().String()
		}
		c, err := open(ctx)
		if err != nil {
			return nil, fmt.Errorf("egress relay: reach the runner: %w", err)
		}
		if dl, ok := ctx.Deadline(); ok {
			c.SetDeadline(dl)
		}
		if _, err := fmt.Fprintf(c, "%s %s %s\n", relayMagic, host, ap); err != nil {
			c.Close()
			return nil, fmt.Errorf("egress relay: %w", err)
		}
		line, err := readLine(c)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("egress relay: no answer from the runner: %w", err)
		}
		if reason, ok := strings.CutPrefix(line, "ERR "); ok {
			c.Close()
			return nil, fmt.Errorf("egress relay: runner refused %s (%s): %s", host, ap, reason)
		}
		if line != "OK" {
			c.Close()
			return nil, fmt.Errorf("egress relay: unexpected answer %q", line)
		}
		c.SetDeadline(time.Time{})
		return c, nil
	}
}

type hostKey struct{}

// readLine reads one '\n'-terminated line byte by byte, so that no tunnel byte
// after it is consumed (at most 1 KiB).
func readLine(r io.Reader) (string, error) {
	var b []byte
	one := make([]byte, 1)
	for len(b) < 1024 {
		if _, err := io.ReadFull(r, one); err != nil {
			return "", err
		}
		if one[0] == '\n' {
			return string(b), nil
		}
		b = append(b, one[0])
	}
	return "", errors.New("line too long")
}

// Relay is the runner's side: it serves guest dial requests, re-checking each
// against the policy (destination only: the guest already checked the binary) and
// the internal-address guard, then dials the requested address.
type Relay struct {
	policy           atomic.Pointer[policy.Compiled]
	Dial             func(ctx context.Context, network, addr string) (net.Conn, error)
	InternalPrefixes []netip.Prefix
	OnEvent          func(Event)
	Logger           *slog.Logger

	wg sync.WaitGroup
}

// NewRelay creates a runner-side relay with the sandbox's current policy.
func NewRelay(p *policy.Compiled) *Relay {
	r := &Relay{}
	r.policy.Store(p)
	return r
}

// SetPolicy replaces the policy for new connections.
func (r *Relay) SetPolicy(p *policy.Compiled) {
	if p != nil {
		r.policy.Store(p)
	}
}

// Serve handles connections from ln (the host end of the guest's egress port) until
// ctx ends or ln fails, then waits for the open tunnels' goroutines.
func (r *Relay) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer r.wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("egress relay: accept: %w", err)
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.ServeConn(ctx, c)
		}()
	}
}

// ServeConn handles one guest stream.
func (r *Relay) ServeConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := readLine(c)
	if err != nil {
		return
	}
	c.SetReadDeadline(time.Time{})
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != relayMagic {
		io.WriteString(c, "ERR malformed request\n")
		return
	}
	host := f[1]
	ap, err := netip.ParseAddrPort(f[2])
	if err != nil {
		io.WriteString(c, "ERR bad address\n")
		return
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	ev := Event{Time: time.Now(), Method: "RELAY", Host: host, Port: int(ap.Port()), Addr: ap.String()}
	emit := func(action, reason string) {
		ev.Action, ev.Reason = action, reason
		if r.OnEvent != nil {
			r.OnEvent(ev)
		}
	}
	d := r.policy.Load().Destination(host, int(ap.Port()))
	ev.Rule = d.Rule
	if !d.Allow {
		emit("deny", d.Reason)
		io.WriteString(c, "ERR "+oneLine(d.Reason)+"\n")
		return
	}
	// The guest's resolution is not trusted: the address must be the host itself
	// when host is an IP, and pass the same internal-address rules as in the guest.
	if hostIP, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil && hostIP.Unmap() != ap.Addr() {
		emit("deny", "address does not match the IP host")
		io.WriteString(c, "ERR address does not match the requested IP\n")
		return
	}
	switch {
	case len(d.AllowedIPs) > 0 && !containsAddr(d.AllowedIPs, ap.Addr()):
		emit("deny", "address not in allowed_ips of "+d.Endpoint)
		io.WriteString(c, "ERR address not in allowed_ips\n")
		return
	case len(d.AllowedIPs) == 0 && !d.Explicit && IsInternal(ap.Addr(), r.InternalPrefixes):
		emit("deny", "SSRF guard: internal address "+ap.Addr().String())
		io.WriteString(c, "ERR internal address\n")
		return
	}
	dial := r.Dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	up, err := dial(dctx, "tcp", ap.String())
	cancel()
	if err != nil {
		emit("error", "dial: "+err.Error())
		io.WriteString(c, "ERR "+oneLine(err.Error())+"\n")
		return
	}
	defer up.Close()
	if _, err := io.WriteString(c, "OK\n"); err != nil {
		return
	}
	emit(action(d), d.Reason)
	splice(c, up)
}

func oneLine(s string) string { return strings.NewReplacer("\n", " ", "\r", " ").Replace(s) }

// dialWithHost passes the requested host name to a RelayDialer.
func dialWithHost(ctx context.Context, host string) context.Context {
	return context.WithValue(ctx, hostKey{}, host)
}
