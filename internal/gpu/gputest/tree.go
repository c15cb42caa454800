package gputest

import (
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
	dst := t.TempDir()
	if err := os.CopyFS(dst, os.DirFS(TreeDir(name))); err != nil {
		t.Fatal(err)
	}
	return dst
}
