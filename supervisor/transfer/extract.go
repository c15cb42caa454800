package transfer

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// EntryError is a tar entry that was refused or failed; Entry is its name as the
// stream spelled it.
type EntryError struct {
	Entry string
	Err   error
}

func (e *EntryError) Error() string { return fmt.Sprintf("tar entry %q: %v", e.Entry, e.Err) }
func (e *EntryError) Unwrap() error { return e.Err }

// CleanName checks a tar entry name (or a hard link's target) and returns it cleaned:
// relative, without NUL bytes and without any ".." component. os.Root enforces the
// same confinement again at write time; this check exists to name the entry early.
func CleanName(name string) (string, error) {
	switch {
	case name == "":
		return "", errors.New("empty name")
	case strings.ContainsRune(name, 0):
		return "", errors.New("name contains a NUL byte")
	case strings.HasPrefix(name, "/"):
		return "", errors.New("absolute path: entries must be relative to the target directory")
	}
	if slices.Contains(strings.Split(name, "/"), "..") {
		return "", errors.New(`path contains "..": entries must stay inside the target directory`)
	}
	c := path.Clean(name)
	if c != "." && !filepath.IsLocal(c) {
		return "", errors.New("path is not local to the target directory")
	}
	return c, nil
}

// permOf keeps the permission bits and the sticky bit; set-user-ID and set-group-ID
// bits are dropped, so a transfer cannot mint privileged programs.
func permOf(mode int64) fs.FileMode {
	m := fs.FileMode(mode) & fs.ModePerm
	if mode&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m
}

type dirMeta struct {
	name  string
	mode  fs.FileMode
	mtime time.Time
}

// Extract writes the tar stream r below root. Every entry must start with the same
// first path component (the tree's top: one file or one directory); when as is not
// empty, the top is created under that name instead. Files belong to whoever runs
// Extract; modes (without set-ID bits), mtimes, symlinks and hard links inside the
// tree are kept. Device nodes, FIFOs, names with ".." or a leading "/", hard links
// out of the tree and writes through a symlink that leaves root are refused with an
// *EntryError. count, when not nil, is told the file bytes written.
func Extract(root *os.Root, as string, r io.Reader, count func(int64)) (Result, error) {
	var res Result
	sr, _ := r.(*spliceReader)
	tr := tar.NewReader(r)
	top := ""
	made := map[string]bool{}
	var dirs []dirMeta
	// Grown to the largest file seen, up to 1 MiB: a stream of small files (or a
	// hostile one that only claims sizes) does not pay for a big zeroed buffer.
	var buf []byte
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return res, fmt.Errorf("read tar stream: %w", err)
		}
		fail := func(err error) (Result, error) { return res, &EntryError{Entry: hdr.Name, Err: err} }
		name, err := CleanName(hdr.Name)
		if err != nil {
			return fail(err)
		}
		if name == "." {
			return fail(errors.New(`the stream must name its top file or directory, not "."`))
		}
		first, _, _ := strings.Cut(name, "/")
		if top == "" {
			top = first
			res.Path = top
			if as != "" {
				res.Path = as
			}
		} else if first != top {
			return fail(fmt.Errorf("entry is outside the tree %q: a stream carries one file or directory", top))
		}
		name = mapTop(name, first, as)
		if dir := path.Dir(name); dir != "." && !made[dir] {
			if err := root.MkdirAll(dir, 0o700); err != nil {
				return fail(err)
			}
			made[dir] = true
		}
		if sparse(hdr) {
			// A few header bytes could expand to terabytes of zeros on disk.
			return fail(errors.New("sparse files are not transferred"))
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := mkdir(root, name); err != nil {
				return fail(err)
			}
			made[name] = true
			dirs = append(dirs, dirMeta{name, permOf(hdr.Mode), hdr.ModTime})
			res.Dirs++
		case tar.TypeReg, '\x00':
			if want := min(max(hdr.Size, 32<<10), 1<<20); int64(len(buf)) < want {
				buf = make([]byte, want)
			}
			var src io.Reader = tr
			if sr != nil && count == nil && hdr.Size >= spliceMin {
				// The contents go from the pipe to the file in the kernel; the tar
				// reader then skips them as already read (spliceReader).
				src = sr.contents(hdr.Size)
			}
			n, err := writeFile(root, name, src, permOf(hdr.Mode), buf, count)
			res.Bytes += n
			if err != nil {
				return fail(err)
			}
			if err := root.Chtimes(name, hdr.ModTime, hdr.ModTime); err != nil {
				return fail(err)
			}
			res.Files++
		case tar.TypeSymlink:
			if hdr.Linkname == "" || strings.ContainsRune(hdr.Linkname, 0) {
				return fail(errors.New("symlink target is empty or contains a NUL byte"))
			}
			if err := replace(root, name); err != nil {
				return fail(err)
			}
			if err := root.Symlink(hdr.Linkname, name); err != nil {
				return fail(err)
			}
			res.Symlinks++
		case tar.TypeLink:
			old, err := CleanName(hdr.Linkname)
			if err != nil {
				return fail(fmt.Errorf("hard link target %q: %w", hdr.Linkname, err))
			}
			lfirst, _, _ := strings.Cut(old, "/")
			if lfirst != top {
				return fail(fmt.Errorf("hard link target %q is outside the tree %q", hdr.Linkname, top))
			}
			if err := replace(root, name); err != nil {
				return fail(err)
			}
			if err := root.Link(mapTop(old, lfirst, as), name); err != nil {
				return fail(err)
			}
			res.Links++
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			return fail(errors.New("device nodes and FIFOs are not transferred"))
		default:
			return fail(fmt.Errorf("unsupported entry type %q", hdr.Typeflag))
		}
	}
	if top == "" {
		return res, errors.New("the tar stream holds no entries")
	}
	// Directory modes and mtimes last, deepest first: a read-only directory must not
	// block its own contents, and writing contents changes a directory's mtime.
	for i := len(dirs) - 1; i >= 0; i-- {
		d := dirs[i]
		if err := root.Chmod(d.name, d.mode); err != nil {
			return res, &EntryError{Entry: d.name, Err: err}
		}
		if err := root.Chtimes(d.name, d.mtime, d.mtime); err != nil {
			return res, &EntryError{Entry: d.name, Err: err}
		}
	}
	return res, nil
}

func sparse(hdr *tar.Header) bool {
	if hdr.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

func mapTop(name, first, as string) string {
	if as == "" {
		return name
	}
	return as + name[len(first):]
}

// mkdir creates a directory, or keeps an existing one (merging into it); another
// kind of file in its place is replaced.
func mkdir(root *os.Root, name string) error {
	err := root.Mkdir(name, 0o700)
	if err == nil || !errors.Is(err, fs.ErrExist) {
		return err
	}
	st, lerr := root.Lstat(name)
	if lerr != nil {
		return lerr
	}
	if st.IsDir() {
		return nil
	}
	if err := root.Remove(name); err != nil {
		return err
	}
	return root.Mkdir(name, 0o700)
}

// replace removes a non-directory at name so that a new entry can take its place.
func replace(root *os.Root, name string) error {
	st, err := root.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if st.IsDir() {
		return errors.New("a directory exists at this path")
	}
	return root.Remove(name)
}

func writeFile(root *os.Root, name string, r io.Reader, perm fs.FileMode, buf []byte, count func(int64)) (int64, error) {
	// O_EXCL: an existing symlink at name is replaced, never followed.
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		if err := replace(root, name); err != nil {
			return 0, err
		}
		f, err = root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	}
	if err != nil {
		return 0, err
	}
	// countingWriter also hides os.File's ReadFrom, which would copy through a 32 KiB
	// buffer instead of buf.
	var n int64
	if sc, ok := r.(*splicedContents); ok {
		n, err = sc.spliceInto(f, buf)
	} else {
		n, err = io.CopyBuffer(countingWriter{f, count}, r, buf)
	}
	if err == nil {
		err = f.Chmod(perm)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return n, err
}

type countingWriter struct {
	w     io.Writer
	count func(int64)
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if c.count != nil {
		c.count(int64(n))
	}
	return n, err
}
