package peercred

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// xucredVersion is XUCRED_VERSION of <sys/ucred.h>: a struct xucred of another
// layout must not be read as this one.
const xucredVersion = 0

// peerCred reads the uid with LOCAL_PEERCRED (macOS has no SO_PEERCRED) and the pid
// with LOCAL_PEERPID: the process that last used the peer's socket, which for a
// socket the gateway dials and uses itself is the gateway.
func peerCred(fd int) (Cred, error) {
	x, err := unix.GetsockoptXucred(fd, unix.SOL_LOCAL, unix.LOCAL_PEERCRED)
	if err != nil {
		return Cred{}, fmt.Errorf("LOCAL_PEERCRED: %w", err)
	}
	if x.Version != xucredVersion {
		return Cred{}, fmt.Errorf("LOCAL_PEERCRED: xucred version %d, want %d", x.Version, xucredVersion)
	}
	pid, err := unix.GetsockoptInt(fd, unix.SOL_LOCAL, unix.LOCAL_PEERPID)
	if err != nil {
		return Cred{}, fmt.Errorf("LOCAL_PEERPID: %w", err)
	}
	return Cred{UID: int(x.Uid), PID: pid}, nil
}

// WaitExit blocks until process pid exits or ctx ends. The kqueue's EVFILT_PROC
// filter holds the process itself from registration on, so (as with a pidfd on
// Linux) a recycled pid cannot be mistaken for the original process. It returns nil
// when the process is gone (or was already gone), ctx.Err() otherwise.
func WaitExit(ctx context.Context, pid int) error {
	kq, err := unix.Kqueue()
	if err != nil {
		return fmt.Errorf("watch pid %d: kqueue: %w", pid, err)
	}
	defer unix.Close(kq)
	watch := []unix.Kevent_t{{
		Ident:  uint64(pid),
		Filter: unix.EVFILT_PROC,
		Flags:  unix.EV_ADD | unix.EV_ONESHOT,
		Fflags: unix.NOTE_EXIT,
	}}
	// With no room for events, a registration error comes back as the call's error.
	_, err = unix.Kevent(kq, watch, nil, nil)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("watch pid %d: kevent: %w", pid, err)
	}
	events := make([]unix.Kevent_t, 1)
	for {
		timeout := unix.NsecToTimespec(int64(500 * time.Millisecond))
		n, err := unix.Kevent(kq, nil, events, &timeout)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("watch pid %d: kevent: %w", pid, err)
		}
		if n > 0 {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}
