//go:build !linux

package transfer

import (
	"io"
	"os"
)

// SocketFile serves relays on sockets directly only on Linux (the supervisor's).
func SocketFile(io.ReadWriteCloser) *os.File { return nil }
