// Package rundir places Unix sockets in a short per-user runtime directory, whatever
// the state directory is: a socket path must fit sun_path (107 bytes), and a state
// dir under a long home directory does not leave room for one. Each state dir gets
// its own subdirectory (a hash of its path), so two gateways never share sockets.
package rundir

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// MaxBase bounds the base directory's length: with a subdirectory, a sandbox
// directory and a socket name it must stay well below sun_path's 107 bytes.
const MaxBase = 40

// Base is the per-user runtime base: /run/openshell for root, else
// $XDG_RUNTIME_DIR/openshell when that is short, else <tmp>/openshell-<uid>.
func Base() string {
	if os.Geteuid() == 0 {
		return "/run/openshell"
	}
	if x := os.Getenv("XDG_RUNTIME_DIR"); filepath.IsAbs(x) && len(x)+len("/openshell") <= MaxBase {
		return filepath.Join(x, "openshell")
	}
	tmp := os.TempDir()
	if len(tmp) > MaxBase-len("/openshell-4294967295") {
		tmp = "/tmp"
	}
	return filepath.Join(tmp, "openshell-"+strconv.Itoa(os.Geteuid()))
}

// For is the runtime directory of a state directory: Base()/<12 hex digits of the
// hash of its absolute path>. It is not created; see Ensure.
func For(stateDir string) string {
	if abs, err := filepath.Abs(stateDir); err == nil {
		stateDir = abs
	}
	h := sha256.Sum256([]byte(filepath.Clean(stateDir)))
	return filepath.Join(Base(), hex.EncodeToString(h[:6]))
}

// Ensure creates dir and its parents up to Base with mode 0700, and checks that Base
// is a real directory owned by this user and closed to others: in a shared /tmp
// someone else could have made it first to read or replace the sockets.
func Ensure(dir string) error {
	base := Base()
	if err := os.MkdirAll(base, 0o700); err != nil {
		return fmt.Errorf("runtime dir: %w", err)
	}
	st, err := os.Lstat(base)
	if err != nil {
		return fmt.Errorf("runtime dir: %w", err)
	}
	if err := private(base, st); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("runtime dir: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("runtime dir: %w", err)
	}
	return nil
}

func private(path string, st fs.FileInfo) error {
	if !st.IsDir() {
		return fmt.Errorf("runtime dir %s is not a directory (a symlink?); remove it", path)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
		return fmt.Errorf("runtime dir %s belongs to uid %d, not to this user (%d); remove it or set XDG_RUNTIME_DIR", path, sys.Uid, os.Geteuid())
	}
	// Search-only bits are allowed: a gateway's socket group passes through to its
	// own subdirectory, and every subdirectory stays closed to all but its owner.
	if st.Mode().Perm()&0o066 != 0 {
		if err := os.Chmod(path, 0o700); err != nil {
			return fmt.Errorf("runtime dir %s is open to others (%v) and cannot be closed: %w", path, st.Mode().Perm(), err)
		}
	}
	return nil
}

// LetTraverse lets uid reach entries below dir without listing anything: every
// directory from dir up to / that uid cannot already traverse gets search
// permission for group and others (0711 for a 0700 directory). A rootless engine
// runs as another user and bind-mounts sockets and files from below dir; the
// directories it passes stay closed to listing, and each sandbox's own directory
// stays its owner's. A directory on the way that belongs to someone other than this
// process cannot be opened: the error names it.
func LetTraverse(dir string, uid int) error {
	for p := filepath.Clean(dir); ; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		sys, ok := st.Sys().(*syscall.Stat_t)
		if ok && st.Mode().Perm()&0o001 == 0 && int(sys.Uid) != uid {
			if int(sys.Uid) != os.Geteuid() {
				return fmt.Errorf("uid %d cannot reach %s (mode %v, owner uid %d): %w", uid, p, st.Mode().Perm(), sys.Uid, fs.ErrPermission)
			}
			if err := os.Chmod(p, st.Mode().Perm()|0o011); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
		}
		if p == "/" || p == "." {
			return nil
		}
	}
}
