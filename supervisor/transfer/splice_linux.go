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
	err = rc.Write(func(out uintptr) bool { return spliceLoop(in, int(out), n, &done, &serr) })
	return done, spliceErr(done, err, serr)
}

// spliceFromPipe moves up to n bytes from the pipe src into the regular file dst
// (at its current offset) in the kernel; errNoSplice as for splice.
func spliceFromPipe(dst, src *os.File, n int64) (int64, error) {
	rc, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}
	out := int(dst.Fd())
	var done int64
	var serr error
	err = rc.Read(func(in uintptr) bool { return spliceLoop(int(in), out, n, &done, &serr) })
	return done, spliceErr(done, err, serr)
}

// spliceLoop splices from in to out until n bytes moved, the source ended, or an
// error; false means the pipe end would block (wait, then call again).
func spliceLoop(in, out int, n int64, done *int64, serr *error) bool {
	for *done < n {
		m, err := unix.Splice(in, nil, out, nil, int(min(n-*done, 1<<20)), unix.SPLICE_F_MOVE|unix.SPLICE_F_MORE)
		switch {
		case errors.Is(err, unix.EAGAIN):
			return false
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			*serr = err
			return true
		case m == 0: // the source ended early; the caller reports it
			return true
		}
		*done += m
	}
	return true
}

func spliceErr(done int64, err, serr error) error {
	if err == nil {
		err = serr
	}
	if done == 0 && (errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM)) {
		err = errNoSplice // a file system or filter that does not splice
	}
	return err
}
