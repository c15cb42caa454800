package transfer

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
)

// Skip decides whether a walked entry stays out of the stream (rel is slash
// separated, relative to the source). Returning true for a directory skips its
// whole subtree.
type Skip func(rel string, isDir bool) bool

// Size is the total size of the regular files below src (src itself when it is a
// file), with the same skip rule WriteTree applies.
func Size(src string, skip Skip) (int64, error) {
	var total int64
	err := walk(src, skip, func(_ string, _ string, info fs.FileInfo) error {
		if info.Mode().IsRegular() {
			total += info.Size()
		}
		return nil
	})
	return total, err
}

// walk calls fn for src and everything below it, not following symlinks below the
// top (the top itself is followed, as cp does).
func walk(src string, skip Skip, fn func(p, rel string, info fs.FileInfo) error) error {
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fn(src, ".", st)
	}
	if real, err := filepath.EvalSymlinks(src); err == nil {
		src = real
	}
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if rel != "." && skip != nil && skip(rel, d.IsDir()) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		return fn(p, rel, info)
	})
}

// WriteTree writes src (a file or a directory tree) to w as a tar stream whose
// entries all start with name. Directories, regular files and symlinks are written
// with their modes and mtimes; sockets and device nodes are left out. count, when
// not nil, is told the file bytes read.
//
// Headers are encoded by archive/tar and the rest of the stream written here, so
// that when w is a spliceWriter (the transfer server's stdout pipe) the contents of
// large files are spliced from the page cache into the pipe without passing through
// this process: two copies of every byte fewer on a download, which counts where a
// sandbox's CPU is emulated.
func WriteTree(w io.Writer, src, name string, skip Skip, count func(int64)) error {
	buf := make([]byte, 1<<20)
	var hb bytes.Buffer
	err := walk(src, skip, func(p, rel string, info fs.FileInfo) error {
		hdr := &tar.Header{Name: path.Join(name, rel), Mode: int64(info.Mode().Perm()), ModTime: info.ModTime()}
		if info.Mode()&fs.ModeSticky != 0 {
			hdr.Mode |= 0o1000
		}
		switch {
		case info.IsDir():
			hdr.Typeflag, hdr.Name = tar.TypeDir, hdr.Name+"/"
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
		case info.Mode().IsRegular():
			hdr.Typeflag, hdr.Size = tar.TypeReg, info.Size()
		default:
			return nil
		}
		// A tar.Writer per entry encodes its header blocks (and any PAX records)
		// into hb; the contents, their padding and the trailer are written here.
		hb.Reset()
		if err := tar.NewWriter(&hb).WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := w.Write(hb.Bytes()); err != nil {
			return err
		}
		if hdr.Typeflag != tar.TypeReg {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		// A file that shrank while being read would corrupt the stream: copy exactly
		// the announced size and fail otherwise.
		var n int64
		switch sw, ok := w.(*spliceWriter); {
		case count != nil:
			n, err = io.CopyBuffer(countingWriter{w, count}, io.LimitReader(f, hdr.Size), buf)
		case ok && sw.pipe != nil && hdr.Size >= spliceMin:
			if err := sw.Flush(); err != nil {
				return err
			}
			if n, err = splice(sw.pipe, f, hdr.Size); errors.Is(err, errNoSplice) {
				n, err = io.CopyBuffer(w, io.LimitReader(f, hdr.Size), buf)
			}
		default:
			n, err = io.CopyBuffer(w, io.LimitReader(f, hdr.Size), buf)
		}
		if err == nil && n != hdr.Size {
			err = fmt.Errorf("%s changed size while being read (%d of %d bytes)", p, n, hdr.Size)
		}
		if err != nil {
			return err
		}
		_, err = w.Write(zeroBlock[:blockPad(hdr.Size)])
		return err
	})
	if err != nil {
		return err
	}
	// The end of the archive: two zero blocks.
	if _, err := w.Write(zeroBlock[:]); err != nil {
		return err
	}
	_, err = w.Write(zeroBlock[:])
	return err
}

// errNoSplice means splice moved nothing because the kernel would not splice from
// that file; the caller copies instead.
var errNoSplice = errors.New("splice not supported here")

// spliceMin is the file size from which WriteTree splices the contents into a
// spliceWriter's pipe; smaller files stay in its buffer with their headers.
const spliceMin = 256 << 10

// zeroBlock is one tar block of zeros (padding and trailer).
var zeroBlock [512]byte

// blockPad is how many zero bytes follow size bytes of contents to fill their last
// tar block.
func blockPad(size int64) int64 { return -size & 511 }
