package sparsefile

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCopyKeepsDataAndHoles(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	const size = 64 << 20
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	// Data at the start, in the middle (not block aligned) and at the very end.
	chunks := map[int64][]byte{0: bytes.Repeat([]byte("a"), 5000), 20<<20 + 123: bytes.Repeat([]byte("b"), 70000), size - 10: []byte("0123456789")}
	for off, b := range chunks {
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	for _, tc := range []struct {
		name string
		copy func(dst, src string, perm os.FileMode) error
	}{{"fresh", Copy}, {"over-existing", Copy}, {"unsynced", CopyUnsynced}, {"unsynced-over-existing", CopyUnsynced}} {
		t.Run(tc.name, func(t *testing.T) {
			dst := filepath.Join(dir, "dst")
			if strings.HasSuffix(tc.name, "over-existing") {
				if err := os.WriteFile(dst, bytes.Repeat([]byte("x"), size+4096), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if err := tc.copy(dst, src, 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(dst)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := os.ReadFile(src)
			if !bytes.Equal(got, want) {
				t.Fatalf("copy differs from the source (len %d vs %d)", len(got), len(want))
			}
			if a := Allocated(dst); a > 4<<20 {
				t.Errorf("copy allocates %d bytes for ~75 KiB of data: holes were filled", a)
			}
		})
	}
}

func TestLinkOrCopyAndMissingSource(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, []byte("image"), 0o644); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "dst")
	if err := LinkOrCopy(dst, src, 0o644); err != nil {
		t.Fatal(err)
	}
	own1, all := AllocatedOwn(dir), Allocated(dir)
	if own1 >= all {
		t.Fatalf("a dir of two links to one file: own %d bytes, all %d: the shared file counted as own", own1, all)
	}
	os.Remove(src)
	if own2 := AllocatedOwn(dir); own2 <= own1 {
		t.Fatalf("the remaining link is the dir's own, yet own bytes went %d -> %d", own1, own2)
	}
	if b, err := os.ReadFile(dst); err != nil || string(b) != "image" {
		t.Fatalf("linked copy after the source went: %q, %v", b, err)
	}
	if err := Copy(filepath.Join(dir, "x"), filepath.Join(dir, "missing"), 0o600); err == nil {
		t.Fatal("copy of a missing file succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); err == nil {
		t.Fatal("a failed copy left its destination")
	}
}
