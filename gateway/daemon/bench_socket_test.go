package daemon

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/gateway/clientconf"
	"github.com/openshell/openshell/gateway/pki"
)

// TestBenchCLIAPI (scripts/bench.sh cliapi) measures what a CLI call costs over the
// local socket and over TCP with mTLS, side by side against one gateway: a small RPC
// on an open connection, and connect + first RPC (what each CLI invocation pays
// before its own work).
func TestBenchCLIAPI(t *testing.T) {
	if os.Getenv("OPENSHELL_BENCH") == "" {
		t.Skip("benchmark: run through scripts/bench.sh cliapi (OPENSHELL_BENCH=1)")
	}
	tmp := tempDir(t)
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(tmp, "cfg"))
	g, cfg := startTLSGateway(t, tmp, nil)
	b, err := pki.Ensure(PKIDir(cfg.StateDir), nil)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := clientconf.WriteEndpoint("tcp", "https://"+g.Addr.String())
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteClientDir(b, dir); err != nil {
		t.Fatal(err)
	}
	tcp, err := clientconf.Load("tcp")
	if err != nil {
		t.Fatal(err)
	}
	local := &clientconf.Gateway{Name: "unix", Endpoint: "unix://" + g.SocketPath}
	ctx := t.Context()
	call := func(c openshellv1.OpenShellClient) {
		if _, err := c.ListSandboxes(ctx, &openshellv1.ListSandboxesRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	rpc := func(reg *clientconf.Gateway, n int) time.Duration {
		cc, err := reg.Dial(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		c := openshellv1.NewOpenShellClient(cc)
		call(c)
		d := make([]time.Duration, n)
		for i := range d {
			s := time.Now()
			call(c)
			d[i] = time.Since(s)
		}
		return p50(d)
	}
	connect := func(reg *clientconf.Gateway, n int) time.Duration {
		d := make([]time.Duration, n)
		for i := range d {
			s := time.Now()
			cc, err := reg.Dial(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			call(openshellv1.NewOpenShellClient(cc))
			d[i] = time.Since(s)
			cc.Close()
		}
		return p50(d)
	}
	ur, tr := rpc(local, 2000), rpc(tcp, 2000)
	uc, tc := connect(local, 200), connect(tcp, 200)
	t.Logf("small RPC (ListSandboxes) p50: unix %v, tcp+mTLS %v, unix/tcp %.2f×", ur, tr, float64(ur)/float64(tr))
	t.Logf("connect + first RPC p50:       unix %v, tcp+mTLS %v, unix/tcp %.2f×", uc, tc, float64(uc)/float64(tc))
	if uc > tc {
		t.Errorf("connecting over the socket (%v) is slower than TCP with an mTLS handshake (%v)", uc, tc)
	}
}

func p50(d []time.Duration) time.Duration {
	slices.Sort(d)
	return d[len(d)/2]
}
