package egress

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// diagInode asks the kernel (NETLINK_SOCK_DIAG, exact lookup, no dump) for the inode
// of the TCP socket local→remote in the caller's network namespace. It costs one
// round trip however many sockets exist, where /proc/net/tcp grows with every
// TIME_WAIT entry on the machine.
func diagInode(local, remote netip.AddrPort) (string, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return "", fmt.Errorf("sock_diag socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return "", err
	}
	tv := unix.Timeval{Sec: 1}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)

	family := uint8(unix.AF_INET)
	if !local.Addr().Is4() || !remote.Addr().Is4() {
		family = unix.AF_INET6
	}
	const hdrLen, reqLen = 16, 56
	msg := make([]byte, hdrLen+reqLen)
	ne := binary.NativeEndian
	ne.PutUint32(msg[0:], uint32(len(msg)))
	ne.PutUint16(msg[4:], 20) // SOCK_DIAG_BY_FAMILY
	ne.PutUint16(msg[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(msg[8:], 1)
	r := msg[hdrLen:]
	r[0] = family
	r[1] = unix.IPPROTO_TCP
	ne.PutUint32(r[4:], 0xffffffff) // all states
	id := r[8:]
	binary.BigEndian.PutUint16(id[0:], local.Port())
	binary.BigEndian.PutUint16(id[2:], remote.Port())
	putAddr(id[4:20], local.Addr(), family)
	putAddr(id[20:36], remote.Addr(), family)
	ne.PutUint32(id[40:], 0xffffffff) // INET_DIAG_NOCOOKIE
	ne.PutUint32(id[44:], 0xffffffff)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return "", fmt.Errorf("sock_diag send: %w", err)
	}
	buf := make([]byte, 8192)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return "", fmt.Errorf("sock_diag receive: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil || len(msgs) == 0 {
		return "", errors.New("sock_diag: bad reply")
	}
	m := msgs[0]
	if m.Header.Type == unix.NLMSG_ERROR {
		if len(m.Data) >= 4 {
			if e := int32(ne.Uint32(m.Data)); e != 0 {
				return "", fmt.Errorf("sock_diag: %w", unix.Errno(-e))
			}
		}
		return "", errors.New("sock_diag: error reply")
	}
	// inet_diag_msg: family, state, timer, retrans (4), sockid (48), expires, rqueue,
	// wqueue, uid (16), inode.
	if len(m.Data) < 72 {
		return "", errors.New("sock_diag: short reply")
	}
	inode := ne.Uint32(m.Data[68:])
	if inode == 0 {
		return "", errors.New("sock_diag: socket has no inode")
	}
	return strconv.FormatUint(uint64(inode), 10), nil
}

func putAddr(dst []byte, a netip.Addr, family uint8) {
	if family == unix.AF_INET {
		b := a.As4()
		copy(dst, b[:])
		return
	}
	b := a.As16()
	copy(dst, b[:])
}
