package gateway_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/gateway"
	"github.com/openshell/openshell/gateway/replica"
	"github.com/openshell/openshell/gateway/store/sqlite"
	"github.com/openshell/openshell/internal/testkeys"
	"github.com/openshell/openshell/supervisor/session"
)

// joinReplicas makes e one replica of a set sharing the store in dir (a second
// handle on the same SQLite file): its peer service on loopback and its lease.
func joinReplicas(t *testing.T, e *env, id string) {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(e.dir, "openshell.db"))
	if err != nil {
		t.Fatal(err)
	}
	srvTLS, cliTLS, err := replica.TLS(e.bundle)
	if err != nil {
		t.Fatal(err)
	}
	p, err := replica.Listen("127.0.0.1:0", srvTLS, e.srv.Hub(), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	reg, err := replica.New(st, replica.Config{ID: id, PeerAddress: p.Addr().String(), ClientTLS: cliTLS, Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Start(t.Context(), e.srv.Hub()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Close()
		reg.Close()
		st.Close()
	})
}

// TestReplicaSessionBinding: two in-process gateways on one store and one driver, a
// real supervisor (session client and SSH server) connected to replica a. Replica b
// reports the sandbox READY and execs through a; and the sandbox's binding holds
// across replicas: with the sandbox's own valid token, a second supervisor instance,
// or the bound instance with a wrong secret, is refused by b while a holds the
// session, and the real session stays where it is.
func TestReplicaSessionBinding(t *testing.T) {
	dir := t.TempDir()
	drv := drivertest.NewMemDriver()
	a := startEnv(t, dir, drv)
	b := startEnv(t, dir, drv)
	joinReplicas(t, a, "a")
	joinReplicas(t, b, "b")
	id := a.create("shared").GetMetadata().GetId()
	real := a.startBound(id, session.NewInstanceSecret(), nil)
	a.waitPhase("shared", phaseReady)
	b.waitPhase("shared", phaseReady)
	if b.srv.Hub().InstanceID(id) != "" {
		t.Fatal("replica b holds the session itself; the test needs it on a")
	}

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	out, code, err := b.execOut(ctx, id, "sh", "-c", "echo through-$((40+2))")
	if err != nil || code != 0 || strings.TrimSpace(out) != "through-42" {
		t.Fatalf("exec through b = %q, %d, %v", out, code, err)
	}
	if fp := b.srv.Hub().HostKeyFingerprint(id); fp == "" || fp != a.srv.Hub().HostKeyFingerprint(id) {
		t.Errorf("b reports host key %q, a %q", fp, a.srv.Hub().HostKeyFingerprint(id))
	}

	for _, atk := range []struct{ name, instance, secret, want string }{
		{"another instance", session.NewInstanceID(), session.NewInstanceSecret(), "holds the sandbox's live session"},
		{"bound instance, wrong secret", real.id.InstanceID, session.NewInstanceSecret(), "wrong instance secret"},
	} {
		t.Run(atk.name, func(t *testing.T) {
			m, err := b.hello(ctx, id, atk.instance, atk.secret, testkeys.SSHPublicKey(t))
			if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), atk.want) {
				t.Fatalf("hello on replica b = %v, %v; want PermissionDenied (%s)", m, err, atk.want)
			}
		})
	}
	if a.srv.Hub().InstanceID(id) != real.id.InstanceID {
		t.Fatal("the refused hellos moved the session off replica a")
	}
	if out, _, err := a.execOut(ctx, id, "echo", "still-a"); err != nil || strings.TrimSpace(out) != "still-a" {
		t.Fatalf("exec through a after the attacks = %q, %v", out, err)
	}
}

// TestReplicaWatchSeesOthersWrites: a watch on replica a sends what replica b wrote
// to the shared store. b's writes wake no watcher of a's; without the re-read a's
// watch (a create waiting for READY, say) sat on the old record for good.
func TestReplicaWatchSeesOthersWrites(t *testing.T) {
	dir := t.TempDir()
	drv := drivertest.NewMemDriver()
	shared := func(o *gateway.Options) { o.SharedStore = true }
	a := startEnvWith(t, dir, drv, 200*time.Millisecond, shared)
	b := startEnvWith(t, dir, drv, 200*time.Millisecond, shared)
	id := a.create("watched").GetMetadata().GetId()
	a.waitDriverSettled("watched")
	b.waitDriverSettled("watched")

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	w, err := a.user.WatchSandbox(ctx, &openshellv1.WatchSandboxRequest{Id: id, FollowStatus: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Recv(); err != nil { // the record as it is
		t.Fatal(err)
	}
	if _, err := b.user.UpdateConfig(ctx, &openshellv1.UpdateConfigRequest{Name: "watched", Policy: networkPolicy("b.example.com")}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for {
		ev, err := w.Recv()
		if err != nil {
			t.Fatalf("a's watch ended before it sent b's policy: %v", err)
		}
		if eps := ev.GetSandbox().GetSpec().GetPolicy().GetNetworkPolicies()["api"].GetEndpoints(); len(eps) == 1 && eps[0].GetHost() == "b.example.com" {
			t.Logf("a's watch sent b's write after %v", time.Since(start).Round(time.Millisecond))
			if d := time.Since(start); d > 3*time.Second {
				t.Fatalf("a's watch took %v to send b's write; it re-reads every second", d)
			}
			return
		}
	}
}
