package images

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Layer tar entries are untrusted. Every path is resolved with openat2 and
// RESOLVE_IN_ROOT, so "..", absolute paths and symlinks (absolute or relative,
// planted by an earlier entry or layer) are all interpreted as if the rootfs
// were "/" — the way the guest will see them — and can never reach the host
// tree outside it. The last path component is never followed: it is what the
// entry creates or replaces, through *at calls on the resolved parent.

const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// UnpackLayer applies one uncompressed layer tar stream onto the rootfs
// directory root, which must exist. It handles OCI whiteouts, ownership,
// modes (setuid/setgid/sticky included), symlinks, hardlinks, device nodes,
// fifos, xattrs and mtimes. Nothing is ever written outside root.
func UnpackLayer(ctx context.Context, root string, r io.Reader) error {
	return unpackLayer(ctx, root, r, 0)
}

// unpackLayer is UnpackLayer with a cap on any one file's size (0: none), so
// fuzzing cannot spend its time writing the zeros of a sparse-file bomb.
func unpackLayer(ctx context.Context, root string, r io.Reader, maxFile int64) error {
	rootFd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open rootfs %s: %w", root, err)
	}
	defer unix.Close(rootFd)
	u := &unpacker{root: rootFd, rootPath: root, maxFile: maxFile, written: map[string]bool{}, ancestors: map[string]bool{}, euid: os.Geteuid()}
	return u.run(ctx, r)
}

type unpacker struct {
	root     int
	rootPath string
	euid     int
	maxFile  int64
	// written holds the cleaned names created by this layer, so an opaque
	// whiteout removes only what lower layers put in the directory.
	written map[string]bool
	// ancestors holds every parent directory of a written name.
	ancestors map[string]bool
	// dirTimes are applied after the layer: creating children changes a
	// directory's mtime.
	dirTimes []dirTime
	opaque   []string
}

type dirTime struct {
	name         string
	atime, mtime time.Time
}

func (u *unpacker) run(ctx context.Context, r io.Reader) error {
	tr := tar.NewReader(r)
	for n := 0; ; n++ {
		if n%64 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading layer tar: %w", errBadTar{err})
		}
		if err := u.entry(hdr, tr); err != nil {
			return fmt.Errorf("layer entry %q: %w", hdr.Name, err)
		}
	}
	// Opaque whiteouts are applied once the layer's own entries are known, so
	// the order of the marker relative to its siblings in the tar does not matter.
	for _, dir := range u.opaque {
		if err := u.clearOpaque(dir); err != nil {
			return fmt.Errorf("opaque whiteout in %q: %w", dir, err)
		}
	}
	for i := len(u.dirTimes) - 1; i >= 0; i-- {
		d := u.dirTimes[i]
		parent, base := splitClean(d.name)
		if err := u.withParent(parent, false, func(pfd int) error {
			return setTimes(pfd, base, d.atime, d.mtime)
		}); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("set mtime of %q: %w", d.name, err)
		}
	}
	return nil
}

// cleanName maps a tar name to a path relative to the rootfs, without "..":
// "../../etc/x" and "/etc/x" both become "etc/x". "" means the rootfs itself.
func cleanName(n string) string {
	c := path.Clean("/" + n)
	return strings.TrimPrefix(c, "/")
}

func splitClean(n string) (parent, base string) {
	i := strings.LastIndex(n, "/")
	if i < 0 {
		return "", n
	}
	return n[:i], n[i+1:]
}

func (u *unpacker) entry(hdr *tar.Header, r io.Reader) error {
	name := cleanName(hdr.Name)
	parent, base := splitClean(name)

	if strings.HasPrefix(base, whiteoutPrefix) {
		switch {
		case base == whiteoutOpaque:
			u.opaque = append(u.opaque, parent)
			return nil
		case strings.HasPrefix(base, whiteoutMeta):
			return nil // other AUFS metadata (.wh..wh.plnk, …): nothing to apply
		}
		target := strings.TrimPrefix(base, whiteoutPrefix)
		if target == "" || target == "." || target == ".." {
			return nil
		}
		err := u.withParent(parent, false, func(pfd int) error { return removeAllAt(pfd, target) })
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			return nil // nothing to hide
		}
		return err
	}

	if name == "" {
		// The rootfs directory itself ("./"): take its metadata, nothing else.
		if hdr.Typeflag == tar.TypeDir {
			return u.applyMeta(u.root, ".", hdr, false)
		}
		return nil
	}
	u.written[name] = true
	for a := parent; a != ""; a, _ = splitClean(a) {
		if u.ancestors[a] {
			break
		}
		u.ancestors[a] = true
	}

	return u.withParent(parent, true, func(pfd int) error {
		switch hdr.Typeflag {
		case tar.TypeDir:
			var st unix.Stat_t
			err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW)
			if err == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR {
				if err := removeAllAt(pfd, base); err != nil {
					return err
				}
				err = unix.ENOENT
			}
			if errors.Is(err, unix.ENOENT) {
				if err := unix.Mkdirat(pfd, base, 0o700); err != nil {
					return fmt.Errorf("mkdir: %w", err)
				}
			} else if err != nil {
				return err
			}
			if err := u.applyMeta(pfd, base, hdr, false); err != nil {
				return err
			}
			u.dirTimes = append(u.dirTimes, dirTime{name: name, atime: hdr.AccessTime, mtime: hdr.ModTime})
			return nil

		case tar.TypeReg, tar.TypeGNUSparse: // archive/tar reports old-style TypeRegA entries as TypeReg
			if u.maxFile > 0 && hdr.Size > u.maxFile {
				return fmt.Errorf("file of %d bytes exceeds the %d-byte limit", hdr.Size, u.maxFile)
			}
			if err := replaceAt(pfd, base); err != nil {
				return err
			}
			fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
			if err != nil {
				return fmt.Errorf("create: %w", err)
			}
			f := os.NewFile(uintptr(fd), base)
			_, cerr := io.Copy(f, r)
			if cerr == nil {
				cerr = u.applyMetaFd(fd, hdr)
			}
			if err := f.Close(); cerr == nil && err != nil {
				cerr = err
			}
			if cerr != nil {
				return cerr
			}
			return setTimes(pfd, base, hdr.AccessTime, hdr.ModTime)

		case tar.TypeSymlink:
			if err := replaceAt(pfd, base); err != nil {
				return err
			}
			if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
				return fmt.Errorf("symlink: %w", err)
			}
			return u.applyMeta(pfd, base, hdr, true)

		case tar.TypeLink:
			target := cleanName(hdr.Linkname)
			if target == "" || target == name {
				return fmt.Errorf("hardlink to %q: not a file in the image", hdr.Linkname)
			}
			if err := replaceAt(pfd, base); err != nil {
				return err
			}
			tparent, tbase := splitClean(target)
			// The target's parent is resolved inside the rootfs too, and linkat
			// without AT_SYMLINK_FOLLOW links the entry itself, never what a
			// symlink there points to: a hardlink cannot reach a host file.
			return u.withParent(tparent, false, func(tfd int) error {
				if err := unix.Linkat(tfd, tbase, pfd, base, 0); err != nil {
					return fmt.Errorf("hardlink to %q: %w", hdr.Linkname, err)
				}
				return nil
			})

		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			if err := replaceAt(pfd, base); err != nil {
				return err
			}
			mode := uint32(hdr.Mode & 0o777)
			switch hdr.Typeflag {
			case tar.TypeChar:
				mode |= unix.S_IFCHR
			case tar.TypeBlock:
				mode |= unix.S_IFBLK
			default:
				mode |= unix.S_IFIFO
			}
			dev := int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))
			if err := unix.Mknodat(pfd, base, mode, dev); err != nil {
				if errors.Is(err, unix.EPERM) && hdr.Typeflag != tar.TypeFifo {
					// Without CAP_MKNOD (rootless): the guest's devtmpfs provides
					// real devices anyway.
					slog.Debug("images: skipping device node", "name", name, "err", err)
					return nil
				}
				return fmt.Errorf("mknod: %w", err)
			}
			return u.applyMeta(pfd, base, hdr, false)

		case tar.TypeXGlobalHeader:
			return nil
		default:
			slog.Debug("images: skipping tar entry of unsupported type", "name", name, "type", hdr.Typeflag)
			delete(u.written, name)
			return nil
		}
	})
}

// withParent resolves dir (relative, cleaned) inside the rootfs and calls fn
// with an O_PATH descriptor of it. With create, missing directories are made
// (0755, root-owned, as image tools do for implicit parents).
func (u *unpacker) withParent(dir string, create bool, fn func(fd int) error) error {
	if dir == "" {
		return fn(u.root)
	}
	fd, err := openInRoot(u.root, dir)
	if errors.Is(err, unix.ENOENT) && create {
		if err := u.mkdirAll(dir); err != nil {
			return err
		}
		fd, err = openInRoot(u.root, dir)
	}
	if err != nil {
		return fmt.Errorf("resolve parent %q: %w", dir, err)
	}
	defer unix.Close(fd)
	return fn(fd)
}

// mkdirAll creates dir inside the rootfs the way a chroot'ed mkdir -p would:
// symlinks met on the way (dangling ones included) are followed inside the
// rootfs and the directories they name are created.
func (u *unpacker) mkdirAll(dir string) error {
	return u.mkdirAllDepth(dir, 0)
}

func (u *unpacker) mkdirAllDepth(dir string, depth int) error {
	if depth > 40 {
		return fmt.Errorf("mkdir %q: %w", dir, unix.ELOOP)
	}
	comps := strings.Split(dir, "/")
	cur := "" // canonical: no symlink components
	for i, c := range comps {
		if c == "" || c == "." {
			continue
		}
		pfd := u.root
		if cur != "" {
			fd, err := openInRoot(u.root, cur)
			if err != nil {
				return fmt.Errorf("resolve %q: %w", cur, err)
			}
			pfd = fd
		}
		var st unix.Stat_t
		err := unix.Fstatat(pfd, c, &st, unix.AT_SYMLINK_NOFOLLOW)
		var target string
		switch {
		case errors.Is(err, unix.ENOENT):
			err = unix.Mkdirat(pfd, c, 0o755)
			if errors.Is(err, unix.EEXIST) {
				err = nil
			}
		case err != nil:
		case st.Mode&unix.S_IFMT == unix.S_IFLNK:
			buf := make([]byte, unix.PathMax)
			var n int
			n, err = unix.Readlinkat(pfd, c, buf)
			if err == nil {
				target = string(buf[:n])
			}
		case st.Mode&unix.S_IFMT != unix.S_IFDIR:
			err = unix.ENOTDIR
		}
		if pfd != u.root {
			unix.Close(pfd)
		}
		if err != nil {
			return fmt.Errorf("mkdir %q: %w", path.Join(cur, c), err)
		}
		if target != "" {
			next := target
			if !path.IsAbs(target) {
				next = path.Join(cur, target)
			}
			return u.mkdirAllDepth(cleanName(path.Join(append([]string{next}, comps[i+1:]...)...)), depth+1)
		}
		cur = path.Join(cur, c)
	}
	return nil
}

func openInRoot(root int, p string) (int, error) {
	for {
		fd, err := unix.Openat2(root, p, &unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
		})
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.ENOSYS) {
			return -1, fmt.Errorf("openat2 is not available (Linux 5.6 or newer is needed to unpack images safely): %w", err)
		}
		return fd, err
	}
}

// replaceAt removes whatever is at base so a new non-directory entry can take
// its place (a later layer overrides a lower one, a file may replace a dir).
func replaceAt(pfd int, base string) error {
	err := removeAllAt(pfd, base)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("replace existing: %w", err)
	}
	return nil
}

// removeAllAt removes name under dirfd recursively without following symlinks.
func removeAllAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return err
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return err
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := removeChildren(fd, nil); err != nil {
		unix.Close(fd)
		return err
	}
	unix.Close(fd)
	return unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
}

// removeChildren empties the directory fd, keeping names for which keep is true.
func removeChildren(fd int, keep func(string) bool) error {
	d := os.NewFile(uintptr(mustDup(fd)), "dir")
	if d == nil {
		return errors.New("dup directory descriptor")
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return err
	}
	sort.Strings(names)
	for _, n := range names {
		if keep != nil && keep(n) {
			continue
		}
		if err := removeAllAt(fd, n); err != nil && !errors.Is(err, unix.ENOENT) {
			return err
		}
	}
	return nil
}

func mustDup(fd int) int {
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1
	}
	return nfd
}

// clearOpaque removes from dir, recursively, everything lower layers put
// there: only what this layer wrote survives.
func (u *unpacker) clearOpaque(dir string) error {
	var fd int
	var err error
	if dir == "" {
		fd, err = unix.Openat(u.root, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	} else {
		var pfd int
		pfd, err = openInRoot(u.root, dir)
		if err == nil {
			// Re-open readable (O_PATH descriptors cannot be listed).
			fd, err = unix.Openat(pfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			unix.Close(pfd)
		}
	}
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return u.keepOnlyWritten(fd, dir)
}

func (u *unpacker) keepOnlyWritten(fd int, dir string) error {
	d := os.NewFile(uintptr(mustDup(fd)), "dir")
	if d == nil {
		return errors.New("dup directory descriptor")
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return err
	}
	sort.Strings(names)
	for _, n := range names {
		p := path.Join(dir, n)
		if !u.written[p] && !u.ancestors[p] {
			if err := removeAllAt(fd, n); err != nil && !errors.Is(err, unix.ENOENT) {
				return err
			}
			continue
		}
		if !u.ancestors[p] {
			continue // written by this layer, nothing of this layer below it
		}
		cfd, err := unix.Openat(fd, n, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
			continue
		}
		if err != nil {
			return err
		}
		err = u.keepOnlyWritten(cfd, p)
		unix.Close(cfd)
		if err != nil {
			return err
		}
	}
	return nil
}

// applyMeta sets owner, mode, xattrs and (for non-directories) times on
// base under pfd without following a symlink there.
func (u *unpacker) applyMeta(pfd int, base string, hdr *tar.Header, isLink bool) error {
	if isLink {
		if err := u.chown(func(uid, gid int) error {
			return unix.Fchownat(pfd, base, uid, gid, unix.AT_SYMLINK_NOFOLLOW)
		}, hdr); err != nil {
			return err
		}
		if err := setXattrs(fmt.Sprintf("/proc/self/fd/%d/%s", pfd, base), hdr, true); err != nil {
			return err
		}
		return setTimes(pfd, base, hdr.AccessTime, hdr.ModTime)
	}
	// Directories, devices and fifos: open without following, then use the fd.
	fd, err := unix.Openat(pfd, base, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	// The /proc path below follows symlinks: make sure this is not one.
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return fmt.Errorf("%q turned into a symlink while unpacking", base)
	}
	if err := u.chown(func(uid, gid int) error {
		return unix.Fchownat(fd, "", uid, gid, unix.AT_EMPTY_PATH)
	}, hdr); err != nil {
		return err
	}
	// chmod after chown: chown clears setuid/setgid.
	procPath := fmt.Sprintf("/proc/self/fd/%d", fd)
	if err := unix.Chmod(procPath, tarMode(hdr)); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	return setXattrs(procPath, hdr, false)
}

func (u *unpacker) applyMetaFd(fd int, hdr *tar.Header) error {
	if err := u.chown(func(uid, gid int) error { return unix.Fchown(fd, uid, gid) }, hdr); err != nil {
		return err
	}
	if err := unix.Fchmod(fd, tarMode(hdr)); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	return setXattrs(fmt.Sprintf("/proc/self/fd/%d", fd), hdr, false)
}

func (u *unpacker) chown(fn func(uid, gid int) error, hdr *tar.Header) error {
	if hdr.Uid < 0 || hdr.Gid < 0 || hdr.Uid > 1<<31 || hdr.Gid > 1<<31 {
		return fmt.Errorf("owner %d:%d out of range", hdr.Uid, hdr.Gid)
	}
	err := fn(hdr.Uid, hdr.Gid)
	if err != nil && u.euid != 0 && (errors.Is(err, unix.EPERM) || errors.Is(err, unix.EINVAL)) {
		return nil // unprivileged unpack (tests, rootless): ownership cannot be kept
	}
	if err != nil {
		return fmt.Errorf("chown %d:%d: %w", hdr.Uid, hdr.Gid, err)
	}
	return nil
}

func tarMode(hdr *tar.Header) uint32 {
	m := uint32(hdr.Mode & 0o777)
	if hdr.Mode&0o4000 != 0 {
		m |= unix.S_ISUID
	}
	if hdr.Mode&0o2000 != 0 {
		m |= unix.S_ISGID
	}
	if hdr.Mode&0o1000 != 0 {
		m |= unix.S_ISVTX
	}
	return m
}

func setXattrs(p string, hdr *tar.Header, isLink bool) error {
	for k, v := range hdr.PAXRecords {
		attr, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok || attr == "" {
			continue
		}
		var err error
		if isLink {
			err = unix.Lsetxattr(p, attr, []byte(v), 0)
		} else {
			err = unix.Setxattr(p, attr, []byte(v), 0)
		}
		if err != nil {
			if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ERANGE) || errors.Is(err, unix.E2BIG) {
				slog.Debug("images: dropping xattr the host filesystem refuses", "attr", attr, "name", hdr.Name, "err", err)
				continue
			}
			return fmt.Errorf("set xattr %s: %w", attr, err)
		}
	}
	return nil
}

func setTimes(pfd int, base string, atime, mtime time.Time) error {
	if mtime.IsZero() {
		return nil
	}
	if atime.IsZero() {
		atime = mtime
	}
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	if err := unix.UtimesNanoAt(pfd, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}
