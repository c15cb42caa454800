package binpath

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFind(t *testing.T) {
	dir := t.TempDir()
	onPath := filepath.Join(dir, "osh-binpath-test")
	if err := os.WriteFile(onPath, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	if p, err := Find("osh-binpath-test", ""); err != nil || p != onPath {
		t.Errorf("on PATH: %q, %v", p, err)
	}
	// Next to the running program wins over PATH.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	beside := filepath.Join(filepath.Dir(exe), "osh-binpath-test")
	if err := os.WriteFile(beside, []byte("#!/bin/sh\n"), 0o755); err == nil {
		t.Cleanup(func() { os.Remove(beside) })
		if p, err := Find("osh-binpath-test", ""); err != nil || p != beside {
			t.Errorf("beside the program: %q, %v", p, err)
		}
	}
	if p, err := Find("osh-binpath-test", onPath); err != nil || p != onPath {
		t.Errorf("override: %q, %v", p, err)
	}
	if _, err := Find("osh-binpath-test", filepath.Join(dir, "gone")); err == nil || !strings.Contains(err.Error(), "gone") {
		t.Errorf("missing override: %v", err)
	}
	if _, err := Find("osh-binpath-absent", ""); err == nil || !strings.Contains(err.Error(), "go build ./cmd/osh-binpath-absent") {
		t.Errorf("absent: %v", err)
	}
}
