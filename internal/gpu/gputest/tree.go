package gputest

import (
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// TreeDir is the recorded tree name (single, hgx8, shared-nic, no-iommu, h200).
func TreeDir(name string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "testdata", name)
}

// CopyTree copies a recorded tree (symlinks as symlinks) into a temp dir the test
// owns and returns that dir (its sys/ is the sysfs root).
func CopyTree(t testing.TB, name string) string {
	t.Helper()
	src := TreeDir(name)
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		r, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, r)
		switch {
		case e.Type()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(l, to)
		case e.IsDir():
			return os.MkdirAll(to, 0o755)
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(to, b, 0o644)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}
