package sqlite

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/openshell/openshell/gateway/store"
	"github.com/openshell/openshell/gateway/store/storetest"
)

func newStore(tb testing.TB) store.Store {
	tb.Helper()
	s, err := Open(context.Background(), filepath.Join(tb.TempDir(), "state", "openshell.db"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Errorf("Close: %v", err)
		}
	})
	return s
}

func TestConformance(t *testing.T) { storetest.Run(t, newStore) }

func BenchmarkStore(b *testing.B) { storetest.Bench(b, newStore) }

func TestReopenPersists(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db", "openshell.db")
	s, err := Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	created, err := s.Create(t.Context(), &store.Object{Kind: "sandbox", ID: "id-1", Workspace: "default", Name: "alpha", Labels: map[string]string{"a": "b"}, Data: []byte("payload")})
	if err != nil {
		t.Fatal(err)
	}
	if created, err = s.Update(t.Context(), created); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(t.Context(), path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s.Close()
	got, err := s.Get(t.Context(), "sandbox", "id-1")
	if err != nil {
		t.Fatalf("Get after reopen: %v", err)
	}
	if got.ResourceVersion != 2 || string(got.Data) != "payload" || got.Labels["a"] != "b" || got.CreatedAtMs != created.CreatedAtMs {
		t.Fatalf("after reopen got %+v, want %+v", got, created)
	}
	// The version keeps counting from where it was.
	if _, err := s.Update(t.Context(), got); err != nil {
		t.Fatalf("Update after reopen: %v", err)
	}
}

func TestFileModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "gateway")
	path := filepath.Join(dir, "openshell.db")
	s, err := Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Create(t.Context(), &store.Object{Kind: "k", ID: "i", Name: "n"}); err != nil {
		t.Fatal(err)
	}
	check := func(p string, want os.FileMode) {
		t.Helper()
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s has mode %v, want %v", p, st.Mode().Perm(), want)
		}
	}
	check(dir, 0o700)
	check(path, 0o600)
	check(path+"-wal", 0o600) // WAL is on and inherits the file's mode
	check(path+"-shm", 0o600)

	var mode string
	if err := s.w.QueryRowContext(t.Context(), "PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal_mode = %q, %v; want wal", mode, err)
	}
}

func TestTightensLooseMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "openshell.db")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("mode after Open = %v, %v; want 0600", st.Mode().Perm(), err)
	}
}

func TestNotADatabase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "openshell.db")
	if err := os.WriteFile(path, []byte("this is not an sqlite file, definitely not at all......"), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := Open(t.Context(), path); err == nil {
		s.Close()
		t.Fatal("Open of a non-database file succeeded")
	}
}

// TestTwoHandlesSameFile runs CAS writers through two independent Stores on one file,
// as two gateway processes would: SQLite's file lock and busy timeout serialize them
// and exactly one writer wins per version.
func TestTwoHandlesSameFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "openshell.db")
	var handles [2]*Store
	for i := range handles {
		s, err := Open(t.Context(), path)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		handles[i] = s
	}
	cur, err := handles[0].Create(t.Context(), &store.Object{Kind: "sandbox", ID: "id", Name: "n"})
	if err != nil {
		t.Fatal(err)
	}
	for round := range 10 {
		var wg sync.WaitGroup
		results := make([]error, 6)
		for w := range results {
			wg.Add(1)
			go func() {
				defer wg.Done()
				o := cur.Clone()
				o.Data = fmt.Appendf(nil, "%d/%d", round, w)
				_, results[w] = handles[w%2].Update(t.Context(), o)
			}()
		}
		wg.Wait()
		wins := 0
		for _, err := range results {
			switch {
			case err == nil:
				wins++
			case !errors.Is(err, store.ErrConflict):
				t.Fatalf("round %d: %v", round, err)
			}
		}
		if wins != 1 {
			t.Fatalf("round %d: %d winners, want 1", round, wins)
		}
		if cur, err = handles[1].Get(t.Context(), "sandbox", "id"); err != nil {
			t.Fatal(err)
		}
	}
	if cur.ResourceVersion != 11 {
		t.Fatalf("final rv %d, want 11", cur.ResourceVersion)
	}
}
