package sqlite

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/openshell/openshell/gateway/store"
)

// TestMigrateFromV1: a database written by a gateway with schema version 1 (objects
// only) opens, keeps its objects and gains the session-holder tables.
func TestMigrateFromV1(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "v1.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, &store.Object{Kind: "sandbox", ID: "id-1", Name: "old"}); err != nil {
		t.Fatal(err)
	}
	// Turn it back into a version-1 database.
	for _, q := range []string{`DROP TABLE supervisor_sessions`, `DROP TABLE replicas`, `PRAGMA user_version = 1`} {
		if _, err := s.w.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()

	s, err = Open(ctx, path)
	if err != nil {
		t.Fatalf("opening a version-1 database: %v", err)
	}
	defer s.Close()
	var v int
	if err := s.r.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil || v != schemaVersion {
		t.Fatalf("user_version = %d, %v; want %d", v, err, schemaVersion)
	}
	if _, err := s.Get(ctx, "sandbox", "id-1"); err != nil {
		t.Fatalf("object lost in the migration: %v", err)
	}
	if _, err := s.RenewReplica(ctx, "r", "10.0.0.1:17671", 1); err != nil {
		t.Fatalf("replica table missing after the migration: %v", err)
	}
	if err := s.PutSession(ctx, store.SessionHolder{SandboxID: "id-1", ReplicaID: "r"}); err != nil {
		t.Fatalf("session table missing after the migration: %v", err)
	}
}
