package netns

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openshell/openshell/internal/testenv"
	"github.com/openshell/openshell/supervisor/egress"
	"github.com/openshell/openshell/supervisor/policy"
)

// TestAgentThroughProxy runs real curl inside the agent namespace: through the
// proxy it reaches an allowed server and is identified as curl across the
// namespace boundary; without the proxy it is refused at once; another binary going
// through the proxy is refused by the policy.
func TestAgentThroughProxy(t *testing.T) {
	curl, err := filepath.EvalSymlinks(testenv.RequireCommand(t, "curl", "apt-get install curl"))
	if err != nil {
		t.Fatal(err)
	}
	inSup := supervisorNS(t)
	cfg := Config{HostLink: "osh-ptest0", HostAddr: netip.MustParsePrefix("10.231.250.1/30"),
		AgentAddr: netip.MustParsePrefix("10.231.250.2/30"), ProxyPort: 3128}

	// The upstream lives on the machine's loopback, where the proxy (running on the
	// test's threads) dials it; only the proxy's listener sits on the veth.
	upstream := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "upstream-ok") }))
	uln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	upstream.Listener = uln
	upstream.Start()
	defer upstream.Close()
	uport := uln.Addr().(*net.TCPAddr).Port

	var n *Net
	var pln net.Listener
	if err := inSup(func() (err error) {
		if n, err = New(cfg); err != nil {
			return err
		}
		pln, err = net.Listen("tcp", n.ProxyAddr().String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer inSup(n.Close)
	pol, err := policy.Parse(fmt.Appendf(nil, "version: 1\nnetwork_policies:\n  curl:\n    endpoints: [{host: 127.0.0.2, port: %d}]\n    binaries: [{path: %s}]\n", uport, curl))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var events []egress.Event
	p, err := egress.New(egress.Config{Policy: policy.MustCompile(pol),
		Identifier: &egress.ProcIdentifier{InNetNS: n.Do},
		OnEvent:    func(e egress.Event) { mu.Lock(); events = append(events, e); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve(context.Background(), pln)
	defer p.Close()
	proxyURL := "http://" + n.ProxyAddr().String()
	target := fmt.Sprintf("http://127.0.0.2:%d/", uport)

	run := func(args ...string) (string, error) {
		cmd := exec.CommandContext(t.Context(), curl, args...)
		cmd.Env = append(egress.ChildEnv(proxyURL, ""), "PATH=/usr/bin:/bin")
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := n.Start(cmd); err != nil {
			return "", err
		}
		err := cmd.Wait()
		return out.String(), err
	}
	// NO_PROXY lists 127.0.0.1 only; 127.0.0.2 goes through the proxy.
	out, err := run("-sS", "--max-time", "10", target)
	if err != nil || out != "upstream-ok" {
		t.Fatalf("curl through proxy: %v %q", err, out)
	}
	mu.Lock()
	last := events[len(events)-1]
	mu.Unlock()
	if last.Action != "allow" || last.Binary != curl {
		t.Fatalf("event: %+v", last)
	}

	t0 := time.Now()
	out, err = run("-sS", "--max-time", "10", "--noproxy", "*", fmt.Sprintf("http://%s:%d/", cfg.HostAddr.Addr(), cfg.ProxyPort+1))
	if err == nil || !strings.Contains(out, "curl: (7)") || time.Since(t0) > 3*time.Second { // 7 = could not connect
		t.Fatalf("direct connection: err=%v out=%q after %v; want a fast refusal", err, out, time.Since(t0))
	}

	// This test binary, inside the namespace, is not curl: the proxy refuses it.
	err = n.Do(func() error {
		c, err := net.DialTimeout("tcp", n.ProxyAddr().String(), 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: 127.0.0.2\r\n\r\n", target)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(c)
		if !strings.HasPrefix(string(b), "HTTP/1.1 403") {
			return fmt.Errorf("non-curl client got %q", b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
