package keyfile

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// TestCreate: the key is written whole, private to its owner, under a private new
// directory; a second Create on the same path leaves the first key and says it exists.
func TestCreate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d", "k.key")
	key, err := Create(path, 32)
	if err != nil || len(key) != 32 {
		t.Fatalf("Create = %d bytes, %v", len(key), err)
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, key) {
		t.Fatalf("file holds %x (%v), want %x", got, err, key)
	}
	for p, want := range map[string]fs.FileMode{path: 0o600, filepath.Dir(path): 0o700} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != want {
			t.Fatalf("%s: mode %v (%v), want %v", p, fi.Mode().Perm(), err, want)
		}
	}
	if _, err := Create(path, 32); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second Create: %v, want fs.ErrExist", err)
	}
	if again, _ := os.ReadFile(path); !bytes.Equal(again, key) {
		t.Fatal("the second Create changed the key")
	}
}
