//go:build !darwin

package vz_test

import (
	"encoding/json"
	"errors"
	"go/build"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/openshell/openshell/internal/darwincheck"
)

const vzPackage = "github.com/openshell/openshell/vmm/vz"

var shared darwincheck.Shared

// darwinGraph is vmm/vz and what its darwin test files import, listed and checked
// once for the package's tests: the standard library and the binding are checked
// from source as they are on darwin/arm64, with cgo faked.
func darwinGraph(t *testing.T) *darwincheck.Graph {
	t.Helper()
	patterns := append([]string{vzPackage}, darwinBuild(t).XTestImports...)
	g, err := shared.Load(".", patterns...)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// vzSourceDir downloads (if needed) the binding and checks its version.
func vzSourceDir(t *testing.T) {
	t.Helper()
	out, err := exec.Command("go", "mod", "download", "-json", darwincheck.VZBinding).Output()
	if err != nil {
		t.Fatalf("go mod download %s: %v", darwincheck.VZBinding, err)
	}
	var m struct{ Version, Dir string }
	if err := json.Unmarshal(out, &m); err != nil || m.Dir == "" {
		t.Fatalf("go mod download %s: %q %v", darwincheck.VZBinding, out, err)
	}
	if m.Version != "v3.6.0" {
		t.Fatalf("%s is %s in go.mod; this check was written for v3.6.0", darwincheck.VZBinding, m.Version)
	}
}

func darwinBuild(t *testing.T) *build.Package {
	t.Helper()
	ctx := build.Default
	ctx.GOOS, ctx.GOARCH, ctx.CgoEnabled = "darwin", "arm64", true
	bp, err := ctx.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	return bp
}

func darwinFiles(t *testing.T) []string {
	t.Helper()
	bp := darwinBuild(t)
	var files []string
	for _, f := range append(bp.GoFiles, bp.CgoFiles...) {
		files = append(files, filepath.Join(bp.Dir, f))
	}
	return files
}

// TestDarwinFilesTypeCheck: vmm/vz as it compiles on macOS, checked on this host
// against the real binding (v3.6.0): a call with a wrong signature fails here.
func TestDarwinFilesTypeCheck(t *testing.T) {
	vzSourceDir(t)
	if files := darwinFiles(t); !strings.Contains(strings.Join(files, " "), "vz_darwin.go") {
		t.Fatalf("darwin build of vmm/vz lacks vz_darwin.go: %v", files)
	}
	g := darwinGraph(t)
	failed := g.Check()
	for _, err := range failed[vzPackage] {
		t.Error(err)
	}
	if errs := slices.DeleteFunc(slices.Clone(failed[darwincheck.VZBinding]), darwincheck.CgoOnly); len(errs) > 0 {
		t.Errorf("the binding does not type-check for darwin beyond cgo: %v", errors.Join(errs...))
	}
	p := g.Package(vzPackage)
	if p == nil || p.Scope().Lookup("Machine") == nil {
		t.Fatal("the darwin build of vmm/vz has no Machine type")
	}
	if g.Package(darwincheck.VZBinding) == nil {
		t.Fatal("the binding was not type-checked")
	}
	// The darwin-only conformance test (run by the macOS workflow) against it too.
	dir, _ := os.Getwd()
	var xtest []string
	for _, f := range darwinBuild(t).XTestGoFiles {
		if strings.HasSuffix(f, "_darwin_test.go") {
			xtest = append(xtest, filepath.Join(dir, f))
		}
	}
	if len(xtest) == 0 {
		t.Fatal("no darwin test files found")
	}
	_, errs := g.CheckFiles(vzPackage+"_test", xtest)
	for _, err := range errs {
		t.Error(err)
	}
	t.Logf("type-checked %d packages for darwin/arm64; cgo-only errors tolerated in the binding: %d", len(g.Packages()), len(failed[darwincheck.VZBinding]))
}

// TestDarwinTypeCheckCatchesWrongCall proves the check can fail: the same files with
// one call changed to a wrong signature must not type-check.
func TestDarwinTypeCheckCatchesWrongCall(t *testing.T) {
	vzSourceDir(t)
	for _, m := range []struct{ from, to, want string }{
		// NewVirtualMachineConfiguration(bootLoader, cpu uint, memorySize uint64)
		{"uint(cfg.VCPUs), uint64(cfg.MemoryMiB)<<20)", "cfg.VCPUs, cfg.MemoryMiB)", "cannot use"},
		// NewDiskImageStorageDeviceAttachment(diskPath string, readOnly bool)
		{"NewDiskImageStorageDeviceAttachment(d.Path, d.ReadOnly)", "NewDiskImageStorageDeviceAttachment(d.Path)", "not enough arguments"},
		// a function the binding does not have
		{"vzlib.NewVirtioSocketDeviceConfiguration()", "vzlib.NewVirtioVsockDeviceConfiguration()", "undefined"},
	} {
		t.Run(m.want, func(t *testing.T) {
			tmp := t.TempDir()
			var files []string
			changed := false
			for _, f := range darwinFiles(t) {
				b, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				s := string(b)
				if strings.Contains(s, m.from) {
					s, changed = strings.Replace(s, m.from, m.to, 1), true
				}
				p := filepath.Join(tmp, filepath.Base(f))
				if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
					t.Fatal(err)
				}
				files = append(files, p)
			}
			if !changed {
				t.Fatalf("vz_darwin.go no longer contains %q: update the mutation", m.from)
			}
			_, errs := darwinGraph(t).CheckFiles(vzPackage, files)
			all := errors.Join(errs...)
			if len(errs) == 0 || !strings.Contains(all.Error(), m.want) || strings.Contains(all.Error(), "could not import") {
				t.Fatalf("mutated call type-checked (errors %v), want %q", errs, m.want)
			}
			t.Logf("caught: %v", errs[0])
		})
	}
}
