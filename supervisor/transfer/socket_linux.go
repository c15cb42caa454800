package transfer

import (
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// SocketFile returns a duplicate of c's socket descriptor when c is a plain socket
// (a bulk stream: vsock, or a Unix socket in tests), for a re-executed server to
// serve the relay on directly (see EnvFramed); nil when c is anything else (a
// RelayStream, a multiplexed stream) or the descriptor cannot be duplicated. The
// caller closes it.
func SocketFile(c io.ReadWriteCloser) *os.File {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	var f *os.File
	_ = rc.Control(func(fd uintptr) {
		if st, err := unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0); err == nil {
			f = os.NewFile(uintptr(st), "relay-socket")
		}
	})
	return f
}
