package vmm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// MinWritableDiskBytes is the smallest writable disk CreateWritableDisk makes.
const MinWritableDiskBytes = 16 << 20

// CreateWritableDisk makes the per-sandbox writable disk: a sparse file of sizeBytes
// formatted ext4 with the host's mkfs.ext4 (the guest has no mkfs). The guest mounts
// it as vdb and keeps the overlay's upper and work directories on it. It refuses to
// overwrite an existing file, so a sandbox's data is never wiped by accident.
func CreateWritableDisk(path string, sizeBytes int64) (retErr error) {
	return CreateWritableDiskContext(context.Background(), path, sizeBytes)
}

// CreateWritableDiskContext is CreateWritableDisk with a context for mkfs.
func CreateWritableDiskContext(ctx context.Context, path string, sizeBytes int64) (retErr error) {
	if sizeBytes < MinWritableDiskBytes {
		return fmt.Errorf("writable disk %s: size %d bytes is below the minimum %d", path, sizeBytes, MinWritableDiskBytes)
	}
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		return fmt.Errorf("writable disk %s: mkfs.ext4 not found (install e2fsprogs, or run scripts/setup-vm-host.sh): %w", path, err)
	}
	if _, err := os.Stat(path); err == nil {
		return fmt.Errorf("writable disk %s: %w; remove it first to recreate it", path, os.ErrExist)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("writable disk %s: %w", path, err)
	}
	defer func() {
		if retErr != nil {
			_ = os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Truncate(sizeBytes); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("writable disk %s: make sparse file: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writable disk %s: %w", path, err)
	}
	// lazy init keeps the file sparse and mkfs fast; the label helps humans debugging.
	out, err := exec.CommandContext(ctx, mkfs, "-q", "-F", "-L", "openshell-data",
		"-E", "lazy_itable_init=1,lazy_journal_init=1", "-m", "0", tmp.Name()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("writable disk %s: mkfs.ext4: %w: %s", path, err, out)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("writable disk %s: created concurrently by someone else: %w", path, err)
		}
		return fmt.Errorf("writable disk %s: %w", path, err)
	}
	return os.Remove(tmp.Name())
}

// CreateImageDisk makes a read-only ext4 image disk from a directory tree with the
// host's mkfs.ext4 -d (no journal: the guest mounts it read-only). Used by tests and
// tools; OCI images are turned into disks by the images package.
func CreateImageDisk(ctx context.Context, path, rootDir string, sizeBytes int64) error {
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		return fmt.Errorf("image disk %s: mkfs.ext4 not found (run scripts/setup-vm-host.sh): %w", path, err)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("image disk %s: %w", path, err)
	}
	if err := f.Truncate(sizeBytes); err != nil {
		_ = f.Close()
		return fmt.Errorf("image disk %s: %w", path, err)
	}
	_ = f.Close()
	out, err := exec.CommandContext(ctx, mkfs, "-q", "-F", "-d", rootDir, "-O", "^has_journal", "-L", "openshell-image", path).CombinedOutput()
	if err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("image disk %s from %s: mkfs.ext4: %w: %s", path, rootDir, err, out)
	}
	return nil
}
