//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/openshell/openshell/guest/channel"
	"github.com/openshell/openshell/guest/channel/wire"
	"github.com/openshell/openshell/internal/relayframe"
)

// Stream counts the limit probes open: the runner's defaults plus a few over.
const (
	gatewayProbeStreams = 64 + 4
	egressProbeStreams  = 256 + 4
)

// probeChannel tries, from inside the guest after the bootstrap, what an agent could:
// fetch the bootstrap again, use the gateway, egress and bulk ports without (or
// with a wrong) instance preamble, and hold more streams than the runner allows. Each
// outcome is a short word the test checks: "refused" (no connection), "closed" (the
// runner closed it without a byte), "open" (still open after the wait), "answered:
// <first line>", "got N bytes".
func probeChannel(secret wire.Secret, sandboxID string) map[string]string {
	out := map[string]string{}
	out["bootstrap_again"] = probeBootstrapAgain()
	wrong := secret
	wrong[0] ^= 0xff
	forged := func(how string) string {
		return fmt.Sprintf(`{"sandbox_id":%q,"probes":{"forged":%q}}`+"\n", sandboxID, how)
	}
	out["gateway_no_preamble"] = probeStream(channel.PortGateway, nil, forged("no-preamble"))
	out["gateway_wrong_secret"] = probeStream(channel.PortGateway, &wrong, forged("wrong-secret"))
	t0 := time.Now()
	out["gateway_silent"] = probeStream(channel.PortGateway, nil, "")
	out["gateway_silent_secs"] = fmt.Sprintf("%.1f", time.Since(t0).Seconds())
	req := "GET /v1/resolve?name=example.com HTTP/1.1\r\nHost: runner\r\n\r\n"
	out["egress_no_preamble"] = probeStream(channel.PortEgress, nil, req)
	out["egress_wrong_secret"] = probeStream(channel.PortEgress, &wrong, req)
	out["egress_good"] = probeStream(channel.PortEgress, &secret, req)
	// The bulk port with a well-formed open frame naming a relay: without this
	// boot's preamble it must not reach the gateway either.
	body := `{"channel_id":"forged","instance_id":"forged"}`
	open := string(relayframe.AppendHeader(nil, relayframe.BulkOpen, len(body))) + body
	out["bulk_no_preamble"] = probeStream(channel.PortBulk, nil, open)
	out["bulk_wrong_secret"] = probeStream(channel.PortBulk, &wrong, open)
	out["gateway_limit"] = probeLimit(channel.PortGateway, secret, gatewayProbeStreams)
	out["egress_limit"] = probeLimit(channel.PortEgress, secret, egressProbeStreams)
	for k, v := range out {
		fmt.Printf("openshell-testguest: probe %s: %s\n", k, v)
	}
	return out
}

func probeBootstrapAgain() string {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	c, err := channel.DialHost(ctx, channel.PortBootstrap)
	if err != nil {
		return "refused"
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 64<<10)
	n, _ := c.Read(b)
	if n == 0 {
		return "closed"
	}
	return fmt.Sprintf("got %d bytes", n)
}

// probeStream dials port, sends the preamble for secret (none when nil) and payload,
// and reports what comes back within 20 s.
func probeStream(port uint32, secret *wire.Secret, payload string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := channel.DialHost(ctx, port)
	if err != nil {
		return "refused"
	}
	defer c.Close()
	var msg []byte
	if secret != nil {
		msg = wire.AppendPreamble(msg, *secret)
	}
	msg = append(msg, payload...)
	if len(msg) > 0 {
		if _, err := c.Write(msg); err != nil {
			return "closed"
		}
	}
	return readOutcome(c, 20*time.Second)
}

func readOutcome(c net.Conn, wait time.Duration) string {
	c.SetReadDeadline(time.Now().Add(wait))
	b := make([]byte, 512)
	n, err := c.Read(b)
	switch {
	case n > 0:
		line, _, _ := strings.Cut(string(b[:n]), "\r\n")
		return "answered: " + line
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "open"
	default:
		return "closed"
	}
}

// probeLimit opens n streams with the right preamble and nothing more, then counts
// how many the runner left open.
func probeLimit(port uint32, secret wire.Secret, n int) string {
	var conns []net.Conn
	failed := 0
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := channel.DialHostAs(ctx, port, secret)
		cancel()
		if err != nil {
			failed++
			continue
		}
		conns = append(conns, c)
	}
	var (
		mu           sync.Mutex
		open, closed int
		wg           sync.WaitGroup
	)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := readOutcome(c, 3*time.Second)
			mu.Lock()
			defer mu.Unlock()
			if o == "open" {
				open++
			} else {
				closed++
			}
		}()
	}
	wg.Wait()
	for _, c := range conns {
		c.Close()
	}
	time.Sleep(500 * time.Millisecond) // let the runner free the slots
	return fmt.Sprintf("open=%d closed=%d failed=%d", open, closed, failed)
}
