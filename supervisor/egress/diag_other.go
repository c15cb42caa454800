//go:build !linux

package egress

import (
	"errors"
	"net/netip"
)

func diagInode(local, remote netip.AddrPort) (string, error) {
	return "", errors.New("egress: sock_diag is Linux-only")
}
