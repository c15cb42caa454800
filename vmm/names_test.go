package vmm

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// qemuWords are QEMU's own names: its binary, monitor, accelerator, machine types,
// command-line syntax. They belong to vmm/qemu and nowhere else under vmm.
var qemuWords = regexp.MustCompile(`(?i)qemu|\bqmp\b|\btcg\b|\bq35\b|x-option-roms|-drive\b|chardev|\bvirtserialport\b|\s-device\b|\s-accel\b`)

// TestNoQEMUNamesOutsideQEMU keeps the base package and the other backends free of
// one hypervisor's dialect (the backend-neutral promise of Config).
func TestNoQEMUNamesOutsideQEMU(t *testing.T) {
	bad := scanForQEMUNames(t, ".")
	for _, b := range bad {
		t.Error(b)
	}
}

// TestNoQEMUNamesScanFails proves the scan finds a QEMU name when one is there.
func TestNoQEMUNamesScanFails(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "x.go"), []byte("package x\n// pass -accel tcg to QEMU\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if bad := scanForQEMUNames(t, dir); len(bad) != 1 {
		t.Fatalf("scan of a file naming QEMU found %v", bad)
	}
}

func scanForQEMUNames(t *testing.T, root string) []string {
	t.Helper()
	var bad []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			// vmm/qemu is QEMU's home; vmm/backends is the registry that names every
			// backend, QEMU included.
			if p != root && (d.Name() == "qemu" || d.Name() == "backends") && filepath.Dir(p) == root {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") && !strings.HasSuffix(p, ".c") || p == "names_test.go" {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(b), "\n") {
			if m := qemuWords.FindString(line); m != "" {
				bad = append(bad, p+":"+itoa(i+1)+": QEMU name "+m+" outside vmm/qemu: "+strings.TrimSpace(line))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return bad
}

func itoa(i int) string {
	s := ""
	for ; i > 0; i /= 10 {
		s = string(rune('0'+i%10)) + s
	}
	return s
}
