package secrets_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/openshell/openshell/gateway/secrets"
	"github.com/openshell/openshell/gateway/store"
	"github.com/openshell/openshell/gateway/store/sqlite"
)

func TestKeyFileModeAndReuse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", secrets.KeyFile)
	b1, err := secrets.LoadOrCreate(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	ct, err := b1.Seal([]byte("s3cret"), []byte("ad"))
	if err != nil {
		t.Fatal(err)
	}
	b2, err := secrets.LoadOrCreate(path) // a restarted gateway reads the same key
	if err != nil {
		t.Fatal(err)
	}
	pt, err := b2.Open(ct, []byte("ad"))
	if err != nil || string(pt) != "s3cret" {
		t.Fatalf("Open after reload = %q, %v", pt, err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := secrets.LoadOrCreate(path); err == nil || !bytes.Contains([]byte(err.Error()), []byte("chmod 600")) {
		t.Fatalf("world-readable key accepted or unclear error: %v", err)
	}
}

func TestRoundTripAndNonces(t *testing.T) {
	b, err := secrets.LoadOrCreate(filepath.Join(t.TempDir(), secrets.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range [][]byte{{}, []byte("x"), bytes.Repeat([]byte("long value "), 1000)} {
		c1, err := b.Seal(v, []byte("provider/p1"))
		if err != nil {
			t.Fatal(err)
		}
		c2, _ := b.Seal(v, []byte("provider/p1"))
		if bytes.Equal(c1, c2) {
			t.Fatal("two seals of one value are identical: nonces are not random")
		}
		got, err := b.Open(c1, []byte("provider/p1"))
		if err != nil || !bytes.Equal(got, v) {
			t.Fatalf("round trip = %q, %v", got, err)
		}
		if _, err := b.Open(c1, []byte("provider/p2")); !errors.Is(err, secrets.ErrDecrypt) {
			t.Fatalf("open with other associated data: %v, want ErrDecrypt", err)
		}
	}
	if _, err := b.Open([]byte("plain"), nil); !errors.Is(err, secrets.ErrDecrypt) {
		t.Fatalf("open of garbage: %v", err)
	}
}

func TestWrongKeyFailsClearly(t *testing.T) {
	dir := t.TempDir()
	b1, _ := secrets.LoadOrCreate(filepath.Join(dir, "a.key"))
	b2, err := secrets.LoadOrCreate(filepath.Join(dir, "b.key"))
	if err != nil {
		t.Fatal(err)
	}
	ct, _ := b1.Seal([]byte("token-value"), nil)
	_, err = b2.Open(ct, nil)
	if !errors.Is(err, secrets.ErrDecrypt) || !bytes.Contains([]byte(err.Error()), []byte("b.key")) {
		t.Fatalf("wrong key: %v, want ErrDecrypt naming the key file", err)
	}
	if _, err := secrets.New([]byte("short"), "test"); err == nil {
		t.Fatal("short key accepted")
	}
}

// TestDatabaseHoldsNoPlaintext writes a sealed value through the real SQLite store and
// scans the database files' bytes for the plaintext.
func TestDatabaseHoldsNoPlaintext(t *testing.T) {
	dir := t.TempDir()
	b, err := secrets.LoadOrCreate(filepath.Join(dir, secrets.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	const secret = "ghp_PLAINTEXT_SHOULD_NEVER_APPEAR_123"
	ct, err := b.Seal([]byte(secret), []byte("provider/p1"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	dbPath := filepath.Join(dir, "openshell.db")
	st, err := sqlite.Open(ctx, dbPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Create(ctx, &store.Object{Kind: "provider", ID: "p1", Name: "github", Data: ct}); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(dbPath + "*") // the db plus any -wal/-shm
	var seen int
	foundCipher := false
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		seen += len(raw)
		if bytes.Contains(raw, []byte(secret)) {
			t.Fatalf("%s contains the plaintext secret", f)
		}
		foundCipher = foundCipher || bytes.Contains(raw, ct)
	}
	if seen == 0 || !foundCipher {
		t.Fatalf("read %d database bytes, ciphertext found: %v (the scan did not see the stored row)", seen, foundCipher)
	}
}
