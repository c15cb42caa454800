package containers

import (
	"errors"
	"io"
	"net"
	"syscall"
)

// Unreachable reports errors that mean the engine's socket cannot be reached at
// all: a failed dial, a refused, missing or reset socket, or a connection that
// ended before the answer did.
func Unreachable(err error) bool {
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return true
	}
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}
