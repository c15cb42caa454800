// Package sparsefile copies files that are mostly holes (VM disks, guest RAM files)
// keeping the holes: a reflink where the filesystem can share blocks, else only the
// data extents (SEEK_DATA/SEEK_HOLE), copied in the kernel (copy_file_range).
package sparsefile

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// Copy copies src to dst (created or truncated, mode perm) and syncs it. The result
// has src's size; only src's data extents are written.
func Copy(dst, src string, perm os.FileMode) error { return copyFile(dst, src, perm, true) }

// CopyUnsynced is Copy without the sync: for a copy worth nothing after the host
// restarts (a VM's memory), whose sync would cost a write of all its data to disk.
// The caller must be able to tell such a copy made before a host restart.
func CopyUnsynced(dst, src string, perm os.FileMode) error { return copyFile(dst, src, perm, false) }

func copyFile(dst, src string, perm os.FileMode, sync bool) (retErr error) {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("sparse copy: %w", err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return fmt.Errorf("sparse copy: %w", err)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return fmt.Errorf("sparse copy: %w", err)
	}
	defer func() {
		if cerr := out.Close(); retErr == nil && cerr != nil {
			retErr = fmt.Errorf("sparse copy: %w", cerr)
		}
		if retErr != nil {
			_ = os.Remove(dst)
		}
	}()
	if !reflink(out, in) {
		if err := copyExtents(out, in, fi.Size()); err != nil {
			return fmt.Errorf("sparse copy %s to %s: %w", src, dst, err)
		}
		if err := out.Truncate(fi.Size()); err != nil {
			return fmt.Errorf("sparse copy: %w", err)
		}
	}
	if !sync {
		return nil
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("sparse copy: sync %s: %w", dst, err)
	}
	return nil
}

// LinkOrCopy hard-links src at dst (free, and the data stays alive while dst does
// even when src is removed), or copies it when they are on different filesystems.
func LinkOrCopy(dst, src string, perm os.FileMode) error {
	err := os.Link(src, dst)
	if err == nil {
		return nil
	}
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("link %s: %w", dst, err)
	}
	return Copy(dst, src, perm)
}

// Allocated is the bytes a file or a directory tree takes on disk (its allocated
// blocks, not its apparent size).
func Allocated(path string) int64 {
	var total int64
	walk(path, func(fi os.FileInfo) { total += allocated(fi) })
	return total
}

// AllocatedOwn is Allocated counting only files with no other hard link: what
// removing the tree frees.
func AllocatedOwn(path string) int64 {
	var total int64
	walk(path, func(fi os.FileInfo) {
		if fi.IsDir() || links(fi) <= 1 {
			total += allocated(fi)
		}
	})
	return total
}

func walk(path string, fn func(os.FileInfo)) {
	fi, err := os.Lstat(path)
	if err != nil {
		return
	}
	fn(fi)
	if !fi.IsDir() {
		return
	}
	ents, err := os.ReadDir(path)
	if err != nil {
		return
	}
	for _, e := range ents {
		walk(path+"/"+e.Name(), fn)
	}
}

// copyRange copies n bytes at off with a plain read/write (the fallback).
func copyRange(out, in *os.File, off, n int64) error {
	if _, err := out.Seek(off, io.SeekStart); err != nil {
		return err
	}
	_, err := io.Copy(out, io.NewSectionReader(in, off, n))
	return err
}
