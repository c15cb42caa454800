package replica

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/openshell/openshell/gateway/hub"
	"github.com/openshell/openshell/gateway/pki"
	"github.com/openshell/openshell/gateway/store"
	"github.com/openshell/openshell/gateway/store/sqlite"
)

type change struct {
	id   string
	live bool
}

// TestRegistry on a real SQLite store: a restarted replica clears the records its
// earlier process left; another replica's live record counts (Live, and the hub's
// listener hears it come and, when that replica's lease ends, go); this replica's
// own record never counts as elsewhere.
func TestRegistry(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	b, err := pki.Ensure(filepath.Join(dir, "pki"), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, cli, err := TLS(b)
	if err != nil {
		t.Fatal(err)
	}
	// Left over from a killed process of replica a.
	if _, err := st.RenewReplica(ctx, "a", "127.0.0.1:1", time.Now().Add(time.Minute).UnixMilli()); err != nil {
		t.Fatal(err)
	}
	if err := st.PutSession(ctx, store.SessionHolder{SandboxID: "stale", ReplicaID: "a", InstanceID: "old"}); err != nil {
		t.Fatal(err)
	}
	changes := make(chan change, 16)
	h := hub.New(hub.Options{OnChange: func(id, _ string, live bool) { changes <- change{id, live} }})
	r, err := New(st, Config{ID: "a", PeerAddress: "127.0.0.1:1", ClientTLS: cli, Lease: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx, h); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := st.GetSession(ctx, "stale"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the earlier process's record survived the restart: %v", err)
	}

	// Replica b (its lease ends in 2 s) holds sb-1.
	if _, err := st.RenewReplica(ctx, "b", "127.0.0.1:2", time.Now().Add(2*time.Second).UnixMilli()); err != nil {
		t.Fatal(err)
	}
	if err := st.PutSession(ctx, store.SessionHolder{SandboxID: "sb-1", ReplicaID: "b", InstanceID: "i", SecretSum: make([]byte, 32)}); err != nil {
		t.Fatal(err)
	}
	if err := r.Claim(ctx, hub.Holder{SandboxID: "sb-own", InstanceID: "j"}); err != nil {
		t.Fatal(err)
	}
	want := func(c change, within time.Duration) {
		t.Helper()
		select {
		case got := <-changes:
			if got != c {
				t.Fatalf("listener heard %+v, want %+v", got, c)
			}
		case <-time.After(within):
			t.Fatalf("listener did not hear %+v within %s", c, within)
		}
	}
	want(change{"sb-1", true}, 3*time.Second)
	if !h.Connected("sb-1") || h.Connected("sb-own") {
		t.Errorf("Connected: sb-1 (on b) %v, sb-own (own record, no local session) %v", h.Connected("sb-1"), h.Connected("sb-own"))
	}
	rh, err := r.Holder(ctx, "sb-1")
	if err != nil || rh == nil || !rh.Live || rh.PeerAddress != "127.0.0.1:2" {
		t.Fatalf("Holder(sb-1) = %+v, %v", rh, err)
	}
	want(change{"sb-1", false}, 5*time.Second) // b stopped renewing
	if h.Connected("sb-1") {
		t.Error("sb-1 still counts as connected after b's lease ended")
	}
	if _, err := h.OpenRelay(context.Background(), "sb-1", nil); !errors.Is(err, hub.ErrNoSession) {
		t.Errorf("OpenRelay on a dead replica's record: %v, want ErrNoSession", err)
	}
	select {
	case c := <-changes:
		t.Errorf("unexpected change %+v (this replica's own record must not count)", c)
	default:
	}
}
