package images

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrNoSpace is wrapped when the filesystem holding the cache (or its work
// directory) runs out of space while converting an image.
var ErrNoSpace = errors.New("no space left on device")

const (
	ext4BlockSize = 4096
	ext4InodeSize = 256
	// ext4MinSize keeps tiny images mountable with room for ext4's own metadata.
	ext4MinSize = 32 << 20
	// ext4Headroom covers group descriptors, bitmaps, directory index blocks
	// and the rounding the estimate does not see.
	ext4Headroom = 16 << 20
)

// TreeUsage is what an ext4 image of a directory tree needs.
type TreeUsage struct {
	DataBytes int64 // file, directory and long-symlink blocks, rounded to 4 KiB
	Inodes    int64 // distinct inodes (hardlinks count once)
}

// MeasureTree walks root without following symlinks.
func MeasureTree(root string) (TreeUsage, error) {
	var u TreeUsage
	seen := map[[2]uint64]bool{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if ok && st.Nlink > 1 && !d.IsDir() {
			k := [2]uint64{uint64(st.Dev), uint64(st.Ino)} //nolint:unconvert // int32 on darwin
			if seen[k] {
				return nil
			}
			seen[k] = true
		}
		u.Inodes++
		// Its directory entry in the parent (8-byte header + name, 4-aligned,
		// plus slack for htree index blocks).
		u.DataBytes += int64(16 + len(d.Name()))
		switch {
		case d.IsDir():
			u.DataBytes += ext4BlockSize
		case info.Mode().IsRegular():
			u.DataBytes += roundUp(info.Size(), ext4BlockSize)
			// Extent tree blocks for large fragmented files.
			u.DataBytes += info.Size() / (32 << 20) * ext4BlockSize
		case info.Mode()&fs.ModeSymlink != 0:
			if info.Size() >= 60 { // shorter targets live in the inode
				u.DataBytes += ext4BlockSize
			}
		}
		return nil
	})
	if err != nil {
		return TreeUsage{}, fmt.Errorf("measure rootfs %s: %w", root, err)
	}
	return u, nil
}

// Ext4Size computes the image size for a tree: data + inode tables + 10% and
// a fixed headroom, at least ext4MinSize, rounded to 4 MiB.
func Ext4Size(u TreeUsage, inodes int64) int64 {
	size := u.DataBytes + u.DataBytes/10 + inodes*ext4InodeSize + ext4Headroom
	size = roundUp(size, 4<<20)
	return max(size, ext4MinSize)
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

// BuildExt4 writes out, a new ext4 filesystem image holding the tree at
// rootfs (owners, modes, xattrs, times kept; root directory owned by 0:0),
// sized from the tree. It returns the image's apparent size. The guest mounts
// it read-only, so there is no journal and no reserved blocks.
func BuildExt4(ctx context.Context, rootfs, out string) (int64, error) {
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		return 0, fmt.Errorf("mkfs.ext4 not found: install e2fsprogs (apt-get install e2fsprogs): %w", err)
	}
	u, err := MeasureTree(rootfs)
	if err != nil {
		return 0, err
	}
	inodes := u.Inodes + u.Inodes/10 + 64
	size := Ext4Size(u, inodes)

	// The image file is sparse: what it really takes is about the data size.
	var sfs unix.Statfs_t
	if err := unix.Statfs(filepath.Dir(out), &sfs); err == nil {
		if free := int64(sfs.Bavail) * int64(sfs.Bsize); free < u.DataBytes { //nolint:unconvert // field types differ by OS
			return 0, fmt.Errorf("%w: building %s needs about %d MiB, %s has %d MiB free; free space or move the image cache",
				ErrNoSpace, out, u.DataBytes>>20, filepath.Dir(out), free>>20)
		}
	}

	cmd := exec.CommandContext(ctx, mkfs,
		"-q", "-F",
		"-t", "ext4",
		"-b", strconv.Itoa(ext4BlockSize),
		"-I", strconv.Itoa(ext4InodeSize),
		"-N", strconv.FormatInt(inodes, 10),
		"-m", "0",
		"-O", "^has_journal",
		"-E", "root_owner=0:0",
		"-L", "openshell-root",
		"-d", rootfs,
		out, strconv.FormatInt(size/1024, 10)+"k")
	var stderr bytes.Buffer
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		_ = os.Remove(out)
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		msg := strings.TrimSpace(stderr.String())
		if strings.Contains(msg, "No space left") || strings.Contains(msg, "Could not allocate block") || strings.Contains(msg, "File too large") {
			return 0, fmt.Errorf("%w: mkfs.ext4 could not write %s (%d MiB image): %s; free space or move the image cache", ErrNoSpace, out, size>>20, msg)
		}
		return 0, fmt.Errorf("mkfs.ext4 -d %s %s (%d MiB, %d inodes) failed: %w: %s", rootfs, out, size>>20, inodes, err, msg)
	}
	// The disk is shared by every VM of the image and must never be written:
	// make an accidental read-write attach fail loudly.
	if err := os.Chmod(out, 0o444); err != nil {
		return 0, err
	}
	f, err := os.Open(out)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		if errors.Is(err, unix.ENOSPC) {
			return 0, fmt.Errorf("%w: syncing %s: %v", ErrNoSpace, out, err)
		}
		return 0, fmt.Errorf("sync %s: %w", out, err)
	}
	return size, nil
}
