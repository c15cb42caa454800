package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/openshell/openshell/gateway/config"
	"github.com/openshell/openshell/internal/rundir"
)

// The local socket serves this machine's administrators without TLS: the kernel
// says who connected (SO_PEERCRED), so there is nothing for a certificate to prove.
// The file mode keeps everyone else from connecting at all; the peer check below
// refuses them again should the mode be loosened, or before chmod has run.

// socketPolicy decides which local callers are administrators.
type socketPolicy struct {
	path      string
	owner     uint32 // the gateway's effective uid
	gid       int    // the socket group's gid, -1 for none
	groupName string
}

// refusal is the message a non-administrator gets: who they are and the fix.
func (p socketPolicy) refusal(uid uint32) string {
	fix := "set socket_group (--socket-group) on the gateway to a group of trusted users and add this user to it, or use a registration with client certificates over TCP"
	who := fmt.Sprintf("root and its owner (uid %d)", p.owner)
	if p.gid >= 0 {
		who = fmt.Sprintf("root, its owner (uid %d) and members of group %s (gid %d)", p.owner, p.groupName, p.gid)
		fix = fmt.Sprintf("add the user to group %s (usermod -aG %s USER, then log in again)", p.groupName, p.groupName)
	}
	return fmt.Sprintf("uid %d may not use the gateway socket %s: only %s are administrators there; %s", uid, p.path, who, fix)
}

// admits reports whether a caller with these credentials is an administrator.
func (p socketPolicy) admits(uid, gid uint32, groups []uint32) bool {
	if uid == 0 || uid == p.owner {
		return true
	}
	if p.gid < 0 {
		return false
	}
	if gid == uint32(p.gid) {
		return true
	}
	for _, g := range groups {
		if g == uint32(p.gid) {
			return true
		}
	}
	return false
}

// lookupGroup resolves a group name or numeric gid.
func lookupGroup(spec string) (int, string, error) {
	if n, err := strconv.Atoi(spec); err == nil && n >= 0 {
		name := spec
		if g, err := user.LookupGroupId(spec); err == nil {
			name = g.Name
		}
		return n, name, nil
	}
	g, err := user.LookupGroup(spec)
	if err != nil {
		return 0, "", fmt.Errorf("socket_group %q: %w; create the group (groupadd %s) or give a gid", spec, err, spec)
	}
	n, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0, "", fmt.Errorf("socket_group %q: gid %q is not a number", spec, g.Gid)
	}
	return n, g.Name, nil
}

// listenSocket opens the local socket of cfg (nil when it is off), with its mode,
// group and directory set, and returns the policy its connections are checked by.
func listenSocket(cfg *config.Config) (*net.UnixListener, *socketPolicy, error) {
	path := cfg.SocketPath()
	if path == "" {
		return nil, nil, nil
	}
	pol := &socketPolicy{path: path, owner: uint32(os.Geteuid()), gid: -1}
	if cfg.SocketGroup != "" {
		gid, name, err := lookupGroup(cfg.SocketGroup)
		if err != nil {
			return nil, nil, err
		}
		pol.gid, pol.groupName = gid, name
	}
	dir := filepath.Dir(path)
	if cfg.Socket == "" {
		if err := rundir.Ensure(dir); err != nil {
			return nil, nil, fmt.Errorf("gateway socket: %w", err)
		}
		if pol.gid >= 0 {
			// The group must reach the socket: its directory lets the group through
			// (no listing), and the shared base lets anyone through to the
			// subdirectories, which stay closed to all but their owner.
			if err := os.Chown(dir, -1, pol.gid); err != nil {
				return nil, nil, fmt.Errorf("gateway socket dir %s: group %s: %w", dir, pol.groupName, err)
			}
			if err := os.Chmod(dir, 0o710); err != nil {
				return nil, nil, err
			}
			if err := os.Chmod(rundir.Base(), 0o711); err != nil {
				return nil, nil, err
			}
		}
	} else if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		// A directory made here is private, or passable by the group only; an
		// existing one is left as its owner set it.
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, nil, fmt.Errorf("gateway socket dir %s: %w", dir, err)
		}
		if pol.gid >= 0 {
			if err := os.Chown(dir, -1, pol.gid); err != nil {
				return nil, nil, fmt.Errorf("gateway socket dir %s: group %s: %w", dir, pol.groupName, err)
			}
			if err := os.Chmod(dir, 0o710); err != nil {
				return nil, nil, err
			}
		}
	}
	if err := removeStale(path); err != nil {
		return nil, nil, err
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, nil, fmt.Errorf("gateway socket %s: %w; set socket to another path, or none", path, err)
	}
	mode := os.FileMode(0o600)
	if pol.gid >= 0 {
		if err := os.Chown(path, -1, pol.gid); err != nil {
			l.Close()
			return nil, nil, fmt.Errorf("gateway socket %s: group %s: %w; the gateway's user must be a member of that group (or root)", path, pol.groupName, err)
		}
		mode = 0o660
	}
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return nil, nil, fmt.Errorf("gateway socket %s: %w", path, err)
	}
	return l, pol, nil
}

// removeStale removes a socket left by a gateway that is gone, and refuses to take
// over one that still answers or a path that is not a socket.
func removeStale(path string) error {
	st, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("gateway socket %s: %w", path, err)
	}
	if st.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("gateway socket %s exists and is not a socket; remove it or set socket to another path", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("gateway socket %s is served by another running gateway; stop it, or set socket to another path (or none)", path)
	}
	return os.Remove(path)
}

// splitCreds secures TCP connections with tcp (mTLS, or nothing under
// --disable-tls), identifies callers on the local socket by their kernel
// credentials (local may be nil: no local socket) and binds connections on a
// sandbox's own socket to that sandbox.
type splitCreds struct {
	tcp   credentials.TransportCredentials
	local *socketPolicy
}

func (s *splitCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if sc, ok := c.(*sandboxConn); ok {
		return c, sandboxPeer(sc), nil
	}
	if uc, ok := c.(*net.UnixConn); ok && s.local != nil {
		ai, err := s.local.identify(uc)
		return c, ai, err
	}
	return s.tcp.ServerHandshake(c)
}

func (s *splitCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("gateway transport credentials are server-side only")
}

func (s *splitCreds) Info() credentials.ProtocolInfo { return s.tcp.Info() }

func (s *splitCreds) Clone() credentials.TransportCredentials {
	return &splitCreds{tcp: s.tcp.Clone(), local: s.local}
}

// OverrideServerName is part of the interface; a server has no name to override.
func (s *splitCreds) OverrideServerName(string) error { return nil }
