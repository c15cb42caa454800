package daemon

import (
	"fmt"
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"

	"github.com/openshell/openshell/gateway/auth"
)

// identify reads the caller's uid and gids from the kernel, as they were at
// connect time, and applies the policy.
func (p *socketPolicy) identify(c *net.UnixConn) (credentials.AuthInfo, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var groups []uint32
	var credErr, groupsErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if p.gid >= 0 {
			groups, groupsErr = peerGroups(int(fd))
		}
	}); err != nil {
		return nil, err
	}
	if credErr != nil {
		return nil, fmt.Errorf("gateway socket: reading the caller's credentials: %w", credErr)
	}
	if groupsErr != nil {
		return nil, fmt.Errorf("gateway socket: reading the caller's groups: %w", groupsErr)
	}
	lp := auth.LocalPeer{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		UID:            cred.Uid, GID: cred.Gid,
		Admin: p.admits(cred.Uid, cred.Gid, groups),
	}
	if !lp.Admin {
		lp.Refusal = p.refusal(cred.Uid)
	}
	return lp, nil
}

// peerGroups returns the caller's supplementary groups (SO_PEERGROUPS): SO_PEERCRED
// carries only the primary gid.
func peerGroups(fd int) ([]uint32, error) {
	buf := make([]uint32, 64)
	for {
		n := uint32(len(buf) * 4)
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
		if e == unix.ERANGE && int(n/4) > len(buf) {
			buf = make([]uint32, n/4)
			continue
		}
		if e == unix.ENOPROTOOPT {
			return nil, nil // kernel before 4.13: the primary gid is all there is
		}
		if e != 0 {
			return nil, e
		}
		return buf[:n/4], nil
	}
}
