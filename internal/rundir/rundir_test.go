package rundir

import (
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
	for _, p := range []string{Base(), dir} {
		st, err := os.Lstat(p)
		if err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v %v, want a 0700 directory", p, st.Mode(), err)
		}
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
