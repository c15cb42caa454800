package egress

import (
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"
)

// socketHolders lists every process holding link among /proc/*/fd. The whole table
// is read every time (no early exit): a second holder is a refusal, not a detail.
// Directory descriptors and one reused buffer keep it to a getdents and a readlinkat
// per descriptor, without walking the path from / each time.
func socketHolders(proc, link string) ([]int, error) {
	root, err := unix.Open(proc, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("egress: open %s: %w", proc, err)
	}
	defer unix.Close(root)
	dents := make([]byte, 32<<10)
	names, err := dirNames(root, dents, nil)
	if err != nil {
		return nil, fmt.Errorf("egress: list %s: %w", proc, err)
	}
	var pids []int
	var fds []string
	target := make([]byte, len(link)+1) // a longer link cannot be equal
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		dir, err := unix.Openat(root, name+"/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue // exited, or not ours to read
		}
		fds, err = dirNames(dir, dents, fds[:0])
		if err == nil {
			for _, fd := range fds {
				if n, err := unix.Readlinkat(dir, fd, target); err == nil && n == len(link) && string(target[:n]) == link {
					pids = append(pids, pid)
					break
				}
			}
		}
		unix.Close(dir)
	}
	if len(pids) == 0 {
		return nil, fmt.Errorf("%w (%s)", ErrNoOwner, link)
	}
	return pids, nil
}

// dirNames appends the entry names of the open directory fd (without . and ..).
func dirNames(fd int, buf []byte, names []string) ([]string, error) {
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			return names, err
		}
		if n <= 0 {
			return names, nil
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
}
