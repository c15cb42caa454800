package peercred

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

func peerCred(fd int) (Cred, error) {
	c, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return Cred{}, fmt.Errorf("SO_PEERCRED: %w", err)
	}
	if c == nil {
		return Cred{}, errors.New("SO_PEERCRED: no credentials")
	}
	return Cred{UID: int(c.Uid), PID: int(c.Pid)}, nil
}

// WaitExit blocks until process pid exits or ctx ends. It uses a pidfd, so a recycled
// pid cannot be mistaken for the original process. It returns nil when the process is
// gone (or was already gone), ctx.Err() otherwise.
func WaitExit(ctx context.Context, pid int) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("watch pid %d: pidfd_open: %w", pid, err)
	}
	defer unix.Close(fd)
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 500)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("watch pid %d: poll: %w", pid, err)
		}
		if n > 0 {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}
