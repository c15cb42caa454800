package vm_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/drivers/vm/internal/runner"
)

// lineGateway stands in for the gateway and keeps every line any bridged connection
// sent, so the test can tell what reached the gateway at all.
type lineGateway struct {
	ln    net.Listener
	mu    sync.Mutex
	lines []string
	conns []net.Conn
	got   chan map[string]string // probes of a report
}

func newLineGateway(t *testing.T) *lineGateway {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &lineGateway{ln: ln, got: make(chan map[string]string, 4)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			g.mu.Lock()
			g.conns = append(g.conns, c)
			g.mu.Unlock()
			go func() {
				defer c.Close()
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					g.mu.Lock()
					g.lines = append(g.lines, sc.Text())
					g.mu.Unlock()
					var r struct {
						Probes map[string]string `json:"probes"`
					}
					if json.Unmarshal(sc.Bytes(), &r) == nil && r.Probes != nil {
						select {
						case g.got <- r.Probes:
						default:
						}
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		g.mu.Lock()
		defer g.mu.Unlock()
		for _, c := range g.conns {
			c.Close()
		}
	})
	return g
}

// TestGuestChannelGuards boots a real guest whose init, after its bootstrap, acts as
// an agent would on the runner's channel ports: it fetches the bootstrap again, talks
// to the gateway, egress and bulk ports without the instance preamble or with a wrong one,
// stays silent, and opens more streams than the runner allows. The runner must refuse
// each one: no second bootstrap, no forged line reaching the gateway, no egress
// answer, exactly the default limits (64 gateway, 256 egress streams) held open, and
// each kind of refusal counted in the status and logged once for its burst.
func TestGuestChannelGuards(t *testing.T) {
	if testing.Short() {
		t.Skip("boots real VMs")
	}
	_, image := vmFixture(t)
	gw := newLineGateway(t)
	dir := shortDir(t)
	d := newTestDriver(t, testConfig(t, dir, gw.ln.Addr().String()))
	defer d.Close()
	id, name := drivertest.NewIDs()
	sb := drivertest.DefaultSandbox(id, name, image)
	sb.Spec.Command = []string{"probe-channel"}
	if err := d.Create(t.Context(), sb); err != nil {
		t.Fatalf("Create: %v", err)
	}
	defer d.Delete(context.Background(), id, "")

	var probes map[string]string
	select {
	case probes = <-gw.got:
	case <-time.After(2 * vmTimeout):
		t.Fatalf("no probe report from the guest within %v", 2*vmTimeout)
	}
	t.Logf("probes: %v", probes)
	rec := record(t, dir, id)

	if p := probes["bootstrap_again"]; p != "refused" && p != "closed" {
		t.Errorf("second bootstrap fetch: %q; want refused or closed (nothing served)", p)
	}
	for _, k := range []string{"gateway_no_preamble", "gateway_wrong_secret", "gateway_silent", "egress_no_preamble", "egress_wrong_secret",
		"bulk_no_preamble", "bulk_wrong_secret"} {
		if probes[k] != "closed" {
			t.Errorf("%s: %q; want the runner to close the connection", k, probes[k])
		}
	}
	if secs, _ := strconv.ParseFloat(probes["gateway_silent_secs"], 64); secs > 30 {
		t.Errorf("a silent connection stayed open %.1f s; the preamble must come within 10 s", secs)
	}
	if p := probes["egress_good"]; !strings.HasPrefix(p, "answered: HTTP/1.1 ") {
		t.Errorf("egress with the right preamble: %q; want an answer of the relay", p)
	}
	// A refused stream is closed at once: the guest sees it end, or its preamble
	// write already fails (both count as refused).
	for k, want := range map[string][2]int{"gateway_limit": {64, 4}, "egress_limit": {256, 4}} {
		var open, closed, failed int
		fmt.Sscanf(probes[k], "open=%d closed=%d failed=%d", &open, &closed, &failed)
		if open != want[0] || closed+failed != want[1] {
			t.Errorf("%s: %q; want %d open and %d refused", k, probes[k], want[0], want[1])
		}
	}
	gw.mu.Lock()
	for _, l := range gw.lines {
		if strings.Contains(l, "forged") {
			t.Errorf("a line sent without the instance preamble reached the gateway: %s", l)
		}
	}
	gw.mu.Unlock()

	st, err := runner.NewClient(rec.Paths.ControlSocket).Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("runner status: %+v", st)
	if st.Bootstrap != 1 || st.BadPreamble != 7 || st.GatewayRefused != 4 || st.EgressRefused != 4 {
		t.Errorf("runner status %+v: want bootstrap_count 1, bad_preamble 7, gateway_refused 4, egress_refused 4", st)
	}
	logb, _ := os.ReadFile(rec.Paths.RunnerLog)
	logs := string(logb)
	for s, want := range map[string]int{
		"too many open streams on the gateway port": 1,
		"too many open streams on the egress port":  1,
		"bootstrap port is closed for this boot":    1,
	} {
		if n := strings.Count(logs, s); n != want {
			t.Errorf("runner log has %d lines with %q, want %d", n, s, want)
		}
	}
	if n := strings.Count(logs, "without this boot's instance preamble"); n < 1 || n >= 7 {
		t.Errorf("runner log has %d lines for 7 connections without the preamble; want at least one, rate-limited", n)
	}
}
