// Package peercred restricts a Unix socket listener to one peer process: every
// accepted connection's peer credentials (SO_PEERCRED on Linux, LOCAL_PEERCRED and
// LOCAL_PEERPID on macOS) must carry the expected uid and (when set) the expected
// pid, otherwise the connection is closed and logged. The VM driver serves
// its compute contract this way so that only the gateway that started it can talk to
// it, even though other processes of the same user can reach the socket file.
package peercred

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
)

// Policy says which peers are accepted.
type Policy struct {
	UID int // required uid (os.Getuid() for "same user")
	PID int // required pid; 0 = any pid of UID
}

// Listener filters a Unix listener by peer credentials.
type Listener struct {
	*net.UnixListener
	policy Policy
	log    *slog.Logger
}

var _ net.Listener = (*Listener)(nil)

// New wraps l.
func New(l *net.UnixListener, p Policy, log *slog.Logger) *Listener {
	if log == nil {
		log = slog.Default()
	}
	return &Listener{UnixListener: l, policy: p, log: log}
}

// Listen creates the socket's directory (0700, when missing), removes a stale socket
// file, listens on path with mode 0600 and wraps the listener with p.
func Listen(path string, p Policy, log *slog.Logger) (*Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("driver socket directory %s: %w", dir, err)
	}
	// MkdirAll keeps an existing directory's mode: tighten it (only when it is ours).
	if st, err := os.Lstat(dir); err == nil {
		if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) == os.Getuid() && st.Mode().Perm()&0o077 != 0 {
			if err := os.Chmod(dir, 0o700); err != nil {
				return nil, fmt.Errorf("driver socket directory %s: chmod 0700: %w", dir, err)
			}
		}
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("driver socket %s exists and is not a socket: remove it or choose another --bind-socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale driver socket %s: %w", path, err)
		}
	}
	// Create the socket with 0600 from the start: no window where it is wider.
	old := syscall.Umask(0o177)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on driver socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("driver socket %s: chmod 0600: %w", path, err)
	}
	return New(l, p, log), nil
}

// Accept returns the next connection whose peer matches the policy. Refused peers are
// closed here and never reach the caller.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.UnixListener.AcceptUnix()
		if err != nil {
			return nil, err
		}
		cred, err := Peer(c)
		if err != nil {
			l.log.Warn("driver socket: refusing connection: cannot read peer credentials", "err", err)
			c.Close()
			continue
		}
		if reason := l.policy.check(cred); reason != "" {
			l.log.Warn("driver socket: refusing connection", "peer_pid", cred.PID, "peer_uid", cred.UID, "reason", reason)
			c.Close()
			continue
		}
		return c, nil
	}
}

func (p Policy) check(c Cred) string {
	if c.UID != p.UID {
		return fmt.Sprintf("uid %d is not the driver's expected uid %d", c.UID, p.UID)
	}
	if p.PID != 0 && c.PID != p.PID {
		return fmt.Sprintf("pid %d is not the expected peer pid %d (--expected-peer-pid)", c.PID, p.PID)
	}
	return ""
}

// Cred is what the kernel reports about a Unix connection's peer.
type Cred struct {
	UID int
	PID int
}

// Peer returns the credentials of a Unix connection's peer.
func Peer(c *net.UnixConn) (Cred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return Cred{}, err
	}
	var cred Cred
	var credErr error
	if err := raw.Control(func(fd uintptr) { cred, credErr = peerCred(int(fd)) }); err != nil {
		return Cred{}, err
	}
	return cred, credErr
}
