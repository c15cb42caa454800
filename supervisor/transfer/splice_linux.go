package transfer

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// splice moves up to n bytes from the regular file src (from its current offset)
// into the pipe dst in the kernel, without copying them through this process. It
// returns errNoSplice, having moved nothing, where the kernel will not splice.
func splice(dst, src *os.File, n int64) (int64, error) {
	rc, err := dst.SyscallConn()
	if err != nil {
		return 0, err
	}
	in := int(src.Fd())
	var done int64
	var serr error
	err = rc.Write(func(out uintptr) bool {
		for done < n {
			m, err := unix.Splice(in, nil, int(out), nil, int(min(n-done, 1<<20)), unix.SPLICE_F_MOVE|unix.SPLICE_F_MORE)
			switch {
			case errors.Is(err, unix.EAGAIN):
				return false // wait until the pipe has room
			case errors.Is(err, unix.EINTR):
				continue
			case err != nil:
				serr = err
				return true
			case m == 0: // the file ended early; the caller reports it
				return true
			}
			done += m
		}
		return true
	})
	if err == nil {
		err = serr
	}
	if done == 0 && (errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM)) {
		err = errNoSplice // a file system or filter that does not splice
	}
	return done, err
}
