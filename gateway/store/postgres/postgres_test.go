package postgres

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/openshell/openshell/gateway/store"
	"github.com/openshell/openshell/gateway/store/postgres/pgtest"
	"github.com/openshell/openshell/gateway/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func open(tb testing.TB, dsn string) *Store {
	tb.Helper()
	s, err := Open(context.Background(), dsn)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

func newStore(tb testing.TB) store.Store { return open(tb, pgtest.DSN(tb)) }

func TestConformance(t *testing.T) { storetest.Run(t, newStore) }

func BenchmarkStore(b *testing.B) { storetest.Bench(b, newStore) }

// TestReplicas opens several Stores (as several gateway replicas would) on one
// database at the same time, then races CAS writers across them.
func TestReplicas(t *testing.T) {
	dsn := pgtest.DSN(t)
	replicas := make([]*Store, 3)
	var wg sync.WaitGroup
	for i := range replicas { // concurrent schema creation must not fail
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := Open(t.Context(), dsn)
			if err != nil {
				t.Errorf("replica %d: %v", i, err)
				return
			}
			replicas[i] = s
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for _, s := range replicas {
		t.Cleanup(func() { _ = s.Close() })
	}
	cur, err := replicas[0].Create(t.Context(), &store.Object{Kind: "sandbox", ID: "id", Workspace: "w", Name: "n"})
	if err != nil {
		t.Fatal(err)
	}
	for round := range 5 {
		errs := make([]error, 6)
		for w := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[w] = replicas[w%len(replicas)].Update(t.Context(), cur.Clone())
			}()
		}
		wg.Wait()
		wins := 0
		for _, err := range errs {
			switch {
			case err == nil:
				wins++
			case !errors.Is(err, store.ErrConflict):
				t.Fatalf("round %d: %v", round, err)
			}
		}
		if wins != 1 {
			t.Fatalf("round %d: %d winners across replicas, want 1", round, wins)
		}
		if cur, err = replicas[2].Get(t.Context(), "sandbox", "id"); err != nil {
			t.Fatal(err)
		}
	}
	if cur.ResourceVersion != 6 {
		t.Fatalf("final rv %d, want 6", cur.ResourceVersion)
	}
}

// TestReopenPersists checks data outlives the pool and the schema is reused.
func TestReopenPersists(t *testing.T) {
	dsn := pgtest.DSN(t)
	s := open(t, dsn)
	if _, err := s.Create(t.Context(), &store.Object{Kind: "k", ID: "i", Name: "n", Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	s2 := open(t, dsn)
	if got, err := s2.Get(t.Context(), "k", "i"); err != nil || string(got.Data) != "x" {
		t.Fatalf("after reopen: %+v, %v", got, err)
	}
}

func TestBadDSN(t *testing.T) {
	_, err := Open(t.Context(), "postgres://user:secret@host:notaport/db")
	if !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("Open(bad DSN) = %v, want ErrInvalid", err)
	}
	if err != nil && strings.Contains(err.Error(), "secret") {
		t.Fatalf("error leaks the password: %v", err)
	}
}

// TestMigrateFromV1: a database a schema-version-1 gateway wrote opens, keeps its
// objects and gains the session-holder tables; the recorded version becomes current.
func TestMigrateFromV1(t *testing.T) {
	dsn := pgtest.DSN(t)
	ctx := context.Background()
	s := open(t, dsn)
	if _, err := s.Create(ctx, &store.Object{Kind: "sandbox", ID: "id-1", Name: "old"}); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`DROP TABLE openshell_supervisor_sessions`, `DROP TABLE openshell_replicas`,
		`UPDATE openshell_store_meta SET value = '1' WHERE key = 'schema_version'`} {
		if _, err := s.pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	s2 := open(t, dsn)
	var v string
	if err := s2.pool.QueryRow(ctx, `SELECT value FROM openshell_store_meta WHERE key = 'schema_version'`).Scan(&v); err != nil || v != fmt.Sprint(schemaVersion) {
		t.Fatalf("schema_version = %q, %v; want %d", v, err, schemaVersion)
	}
	if _, err := s2.Get(ctx, "sandbox", "id-1"); err != nil {
		t.Fatalf("object lost in the migration: %v", err)
	}
	if err := s2.PutSession(ctx, store.SessionHolder{SandboxID: "id-1", ReplicaID: "r"}); err != nil {
		t.Fatalf("session table missing after the migration: %v", err)
	}
}
