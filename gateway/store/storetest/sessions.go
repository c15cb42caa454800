package storetest

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/openshell/openshell/gateway/store"
)

// testSessions checks the replica leases and session holders of store.Sessions: a
// holder is live only while its replica's lease runs, a newer holder replaces an older
// one, a replica releases only its own records, and pruning drops dead replicas.
func testSessions(t *testing.T, s store.Store) {
	ss, ok := s.(store.Sessions)
	if !ok {
		t.Skip("backend does not record session holders")
	}
	ctx := t.Context()
	now := time.Now().UnixMilli()
	// Unique ids: a shared database may hold other tests' rows.
	a, b, sb := "a-"+uuid.NewString(), "b-"+uuid.NewString(), "sb-"+uuid.NewString()
	created, err := ss.RenewReplica(ctx, a, "10.0.0.1:17671", now+30_000)
	if err != nil || !created {
		t.Fatalf("first RenewReplica = %v, %v; want created", created, err)
	}
	if created, err = ss.RenewReplica(ctx, a, "10.0.0.1:17671", now+40_000); err != nil || created {
		t.Fatalf("second RenewReplica = %v, %v; want an update", created, err)
	}
	if _, err := ss.RenewReplica(ctx, b, "10.0.0.2:17671", now-1); err != nil { // already expired
		t.Fatal(err)
	}
	if _, err := ss.GetSession(ctx, sb); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetSession before any put: %v, want ErrNotFound", err)
	}
	if err := ss.PutSession(ctx, store.SessionHolder{SandboxID: sb}); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("PutSession without a replica: %v, want ErrInvalid", err)
	}
	key := []byte("\x00\x00\x00\x0bssh-ed25519")
	sum := bytes.Repeat([]byte{7}, 32)
	if err := ss.PutSession(ctx, store.SessionHolder{SandboxID: sb, ReplicaID: b, InstanceID: "i1", SecretSum: sum, HostKey: key}); err != nil {
		t.Fatal(err)
	}
	h, err := ss.GetSession(ctx, sb)
	if err != nil {
		t.Fatal(err)
	}
	if h.ReplicaID != b || h.PeerAddress != "10.0.0.2:17671" || h.InstanceID != "i1" || !bytes.Equal(h.SecretSum, sum) || !bytes.Equal(h.HostKey, key) {
		t.Fatalf("GetSession = %+v", h)
	}
	if h.Live(time.UnixMilli(now)) {
		t.Error("a holder whose replica lease ended counts as live")
	}
	if live := sessionsOf(t, ss, now, sb); len(live) != 0 {
		t.Errorf("ListSessions lists a holder whose lease ended: %+v", live)
	}
	// Another replica takes the session over (the supervisor reconnected to it).
	if err := ss.PutSession(ctx, store.SessionHolder{SandboxID: sb, ReplicaID: a, InstanceID: "i1", SecretSum: sum}); err != nil {
		t.Fatal(err)
	}
	live := sessionsOf(t, ss, now, sb)
	if len(live) != 1 || live[0].ReplicaID != a || live[0].PeerAddress != "10.0.0.1:17671" || live[0].HostKey != nil || !live[0].Live(time.UnixMilli(now)) {
		t.Fatalf("after the takeover ListSessions = %+v", live)
	}
	// The old holder's late release must not remove the new holder's record.
	if err := ss.DeleteSession(ctx, sb, b); err != nil {
		t.Fatal(err)
	}
	if h, err := ss.GetSession(ctx, sb); err != nil || h.ReplicaID != a {
		t.Fatalf("a release by the old holder removed the new record: %+v, %v", h, err)
	}
	// Pruning drops the expired replica b, not a or a's session.
	if err := ss.PruneReplicas(ctx, now); err != nil {
		t.Fatal(err)
	}
	if created, err := ss.RenewReplica(ctx, b, "10.0.0.2:17671", now-1); err != nil || !created {
		t.Errorf("after pruning, replica b's lease row should be gone: created=%v err=%v", created, err)
	}
	if h, err := ss.GetSession(ctx, sb); err != nil || h.ReplicaID != a {
		t.Fatalf("pruning removed a live replica's session: %+v, %v", h, err)
	}
	if err := ss.DeleteSession(ctx, sb, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := ss.GetSession(ctx, sb); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("after DeleteSession(any): %v", err)
	}
	// A clean shutdown removes the replica's lease and its sessions.
	if err := ss.PutSession(ctx, store.SessionHolder{SandboxID: sb, ReplicaID: a, InstanceID: "i2"}); err != nil {
		t.Fatal(err)
	}
	if err := ss.RemoveReplica(ctx, a); err != nil {
		t.Fatal(err)
	}
	if _, err := ss.GetSession(ctx, sb); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("after RemoveReplica: %v", err)
	}
	_ = ss.RemoveReplica(ctx, b)
}

func sessionsOf(t *testing.T, ss store.Sessions, now int64, sandboxID string) []store.SessionHolder {
	t.Helper()
	all, err := ss.ListSessions(t.Context(), now)
	if err != nil {
		t.Fatal(err)
	}
	var out []store.SessionHolder
	for _, h := range all {
		if h.SandboxID == sandboxID {
			out = append(out, h)
		}
	}
	return out
}
