package sparsefile

import (
	"errors"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

func reflink(out, in *os.File) bool {
	return unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil
}

// copyExtents copies each data extent of in (size bytes) to the same offset of out.
func copyExtents(out, in *os.File, size int64) error {
	var off int64
	for off < size {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, syscall.ENXIO) {
			return nil // only a hole up to the end
		}
		if err != nil {
			// A filesystem without SEEK_DATA: copy the rest whole.
			return copyRange(out, in, off, size-off)
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			hole = size
		}
		if err := copyKernel(out, in, data, hole-data); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

// copyKernel copies n bytes at off in the kernel, falling back to read/write where
// copy_file_range is refused.
func copyKernel(out, in *os.File, off, n int64) error {
	for n > 0 {
		roff, woff := off, off
		c, err := unix.CopyFileRange(int(in.Fd()), &roff, int(out.Fd()), &woff, int(min(n, 1<<30)), 0)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			return copyRange(out, in, off, n)
		}
		if c == 0 {
			return errors.New("source shorter than it was")
		}
		off += int64(c)
		n -= int64(c)
	}
	return nil
}

func allocated(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

func links(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Nlink)
	}
	return 1
}
