package rundir

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestForIsShortAndPerStateDir(t *testing.T) {
	long := "/" + strings.Repeat("h", 199) + "/.local/state/openshell/vm-driver/sb"
	a, b := For(long), For(long+"2")
	if a == b {
		t.Errorf("two state dirs share %s", a)
	}
	if For(long) != a {
		t.Errorf("For is not stable")
	}
	// A sandbox's VMM sockets under the runtime dir: 16-hex sandbox dir, "v", and the
	// longest channel socket name must fit sun_path.
	if p := filepath.Join(a, strings.Repeat("f", 16), "v", "vsock.sock_4294967295"); len(p) > 107 {
		t.Errorf("socket path %s is %d bytes, over 107", p, len(p))
	}
	if !strings.HasPrefix(a, Base()+"/") || len(Base()) > MaxBase {
		t.Errorf("For = %s, Base = %s (max %d)", a, Base(), MaxBase)
	}
}

func TestEnsure(t *testing.T) {
	dir := filepath.Join(For(t.TempDir()), "sandbox")
	t.Cleanup(func() { os.RemoveAll(filepath.Dir(dir)) })
	if err := Ensure(dir); err != nil {
		t.Fatal(err)
	}
	// Base may carry search-only bits (LetTraverse, a gateway's socket group, run by
	// another package's test on this machine); it is never readable or writable by
	// others. A state dir's own directory is 0700.
	if st, err := os.Lstat(Base()); err != nil || !st.IsDir() || st.Mode().Perm()&0o766 != 0o700 {
		t.Errorf("%s: %v %v, want a directory only its owner can list or write", Base(), st.Mode(), err)
	}
	if st, err := os.Lstat(dir); err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
		t.Errorf("%s: %v %v, want a 0700 directory", dir, st.Mode(), err)
	}
	if err := Ensure(dir); err != nil {
		t.Errorf("second Ensure: %v", err)
	}
}

// A base that is a symlink, or that belongs to someone else (made first in a shared
// /tmp), is refused; one open to others is closed.
func TestPrivate(t *testing.T) {
	dir := t.TempDir()
	link := filepath.Join(dir, "link")
	if err := os.Symlink(t.TempDir(), link); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Lstat(link)
	if err := private(link, st); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("symlink: err = %v", err)
	}
	open := filepath.Join(dir, "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	st, _ = os.Lstat(open)
	if err := private(open, st); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Lstat(open); st.Mode().Perm() != 0o700 {
		t.Errorf("open dir left %v", st.Mode().Perm())
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(open, 4242, 4242); err != nil {
			t.Fatal(err)
		}
		st, _ = os.Lstat(open)
		if err := private(open, st); err == nil || !strings.Contains(err.Error(), "belongs to uid 4242") {
			t.Errorf("foreign dir: err = %v", err)
		}
	}
}

// LetTraverse opens each closed directory on the way up for search only, leaves the
// other user's own directory alone, and refuses one that belongs to a third user.
func TestLetTraverse(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown to another user needs root")
	}
	const other = 54321
	root := t.TempDir()
	mid := filepath.Join(root, "mid")
	own := filepath.Join(mid, "own")
	if err := os.MkdirAll(own, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(root, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(own, other, other); err != nil {
		t.Fatal(err)
	}
	if err := LetTraverse(own, other); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{root: 0o711, mid: 0o711, own: 0o700} {
		if st, err := os.Stat(p); err != nil || st.Mode().Perm() != want {
			t.Errorf("%s: %v %v, want %v", p, st.Mode().Perm(), err, want)
		}
	}
	// A directory of a third user on the way: this process may not open it.
	third := filepath.Join(root, "third")
	below := filepath.Join(third, "below")
	if err := os.MkdirAll(below, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(third, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(third, other+1, other+1); err != nil {
		t.Fatal(err)
	}
	// Root may chmod anything; the rule is about ownership, not capability.
	err := LetTraverse(below, other)
	if err == nil || !strings.Contains(err.Error(), third) || !errors.Is(err, fs.ErrPermission) {
		t.Errorf("third user's dir on the way: err = %v, want one naming %s", err, third)
	}
	if st, _ := os.Stat(third); st.Mode().Perm() != 0o700 {
		t.Errorf("third user's dir was changed to %v", st.Mode().Perm())
	}
}
