//go:build !linux

package daemon

import (
	"fmt"
	"net"

	"google.golang.org/grpc/credentials"
)

// identify refuses: without the kernel's word on who called, the socket cannot tell
// an administrator from anyone else. Use TCP with client certificates here.
func (p *socketPolicy) identify(*net.UnixConn) (credentials.AuthInfo, error) {
	return nil, fmt.Errorf("gateway socket %s: caller credentials are not supported on this platform; set socket to none and use TCP with client certificates", p.path)
}
