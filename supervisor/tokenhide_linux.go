package supervisor

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/supervisor/bootstrap"
	"github.com/openshell/openshell/supervisor/sandboxuser"
)

// hideTokenFile keeps the sandbox token for the supervisor alone. A driver may hand
// the token in as a file that the agent could read: the Docker driver bind-mounts a
// host directory where the token is 0600 but owned by the gateway's uid, which may be
// the agent's uid too, and the default policy lets the agent read /etc. So the
// supervisor reads the token once into memory (cfg.Token, which LoadToken returns
// from then on) and bind-mounts an empty root-owned file of mode 0000 (in the
// root-only runDir) read-only over it in its mount namespace, before any program of
// the sandbox starts: the agent inherits the covered view, gets EACCES opening the
// path and, without CAP_SYS_ADMIN, cannot unmount the cover. When the mount is impossible (no
// CAP_SYS_ADMIN) and the agent could read the file, the start is refused.
//
// A supervisor that is not root runs the agent as itself: there is no one to hide
// the token from, and nothing is done.
func hideTokenFile(cfg *bootstrap.Config, agent *sandboxuser.User, runDir string, log *slog.Logger) error {
	if cfg.TokenFile == "" || os.Geteuid() != 0 {
		return nil
	}
	tok, err := cfg.LoadToken()
	if err != nil {
		return fmt.Errorf("supervisor: %w", err)
	}
	if tok == "" {
		return fmt.Errorf("supervisor: the sandbox token file %s is empty (or already covered): the driver must write the token there", cfg.TokenFile)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(cfg.TokenFile, &st); err != nil {
		return fmt.Errorf("supervisor: stat sandbox token file %s: %w", cfg.TokenFile, err)
	}
	cfg.Token = tok
	merr := cover(cfg.TokenFile, filepath.Join(runDir, "token-cover"))
	if merr == nil {
		log.Debug("sandbox token file covered", "path", cfg.TokenFile)
		return nil
	}
	if agentCanRead(&st, agent) {
		return fmt.Errorf("supervisor: the sandbox token file %s (owner uid %d, mode %04o) is readable by the sandbox user %s (uid %d) and cannot be hidden from it (%v): give the supervisor CAP_SYS_ADMIN, or have the driver hand the token in a file the sandbox user cannot read",
			cfg.TokenFile, st.Uid, st.Mode&0o7777, agent.Name, agent.UID, merr)
	}
	log.Warn("the sandbox token file could not be covered; the sandbox user cannot read it, so the start goes on", "path", cfg.TokenFile, "err", merr)
	return nil
}

// cover bind-mounts an empty file of mode 0000 (created at coverFile, in a root-only
// directory) over path, read-only.
func cover(path, coverFile string) error {
	if err := os.MkdirAll(filepath.Dir(coverFile), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(coverFile), err)
	}
	f, err := os.OpenFile(coverFile, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fmt.Errorf("create the cover file %s: %w", coverFile, err)
	}
	f.Close()
	if err := os.Chmod(coverFile, 0); err != nil {
		return fmt.Errorf("chmod the cover file %s: %w", coverFile, err)
	}
	if err := unix.Mount(coverFile, path, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mount %s over %s: %w", coverFile, path, err)
	}
	// Read-only as well; should the remount fail, the cover is still an empty file
	// of mode 0000 owned by root, which the agent can neither read nor write.
	_ = unix.Mount("", path, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NOEXEC|unix.MS_NODEV, "")
	return nil
}

// agentCanRead reports whether the sandbox user may read a file with st's owner and
// mode (by owner, by one of its groups, or by anyone).
func agentCanRead(st *syscall.Stat_t, u *sandboxuser.User) bool {
	switch {
	case st.Mode&0o004 != 0:
		return true
	case st.Uid == u.UID:
		return st.Mode&0o400 != 0
	}
	if st.Mode&0o040 == 0 {
		return false
	}
	if st.Gid == u.GID {
		return true
	}
	for _, g := range u.Groups {
		if g == st.Gid {
			return true
		}
	}
	return false
}
