//go:build !darwin

package vz_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/build"
	"go/parser"
	"go/token"
	"go/types"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	sharedOnce    sync.Once
	sharedChecker *darwinChecker
)

// checker is one darwinChecker for the package's tests: the standard library and
// the binding are checked once.
func checker(t *testing.T) *darwinChecker {
	sharedOnce.Do(func() { sharedChecker = newDarwinChecker() })
	return sharedChecker
}

// vzModule is the Virtualization.framework binding the darwin files are written
// against (the version in go.mod).
const vzModule = "github.com/Code-Hex/vz/v3"

// darwinChecker type-checks packages as they compile for darwin/arm64, from source,
// with cgo faked (go/types FakeImportC): the binding's Objective-C half cannot build
// here, but every Go-level call into it is checked against its real signatures.
type darwinChecker struct {
	fset    *token.FileSet
	ctx     build.Context
	pkgs    map[string]*types.Package
	depErrs map[string]int // dependency -> errors tolerated (cgo only)
}

func newDarwinChecker() *darwinChecker {
	ctx := build.Default
	ctx.GOOS, ctx.GOARCH, ctx.CgoEnabled = "darwin", "arm64", true
	fset := token.NewFileSet()
	return &darwinChecker{fset: fset, ctx: ctx, pkgs: map[string]*types.Package{}, depErrs: map[string]int{}}
}

func (c *darwinChecker) Import(path string) (*types.Package, error) { return c.ImportFrom(path, "", 0) }

func (c *darwinChecker) ImportFrom(path, dir string, mode types.ImportMode) (*types.Package, error) {
	if path == "unsafe" {
		return types.Unsafe, nil
	}
	if p, ok := c.pkgs[path]; ok {
		return p, nil
	}
	bp, err := c.ctx.Import(path, dir, 0)
	if err != nil {
		return nil, err
	}
	// The standard library too is checked as it is on darwin (syscall.Sysctl, ...).
	files := append(append([]string(nil), bp.GoFiles...), bp.CgoFiles...)
	for i := range files {
		files[i] = filepath.Join(bp.Dir, files[i])
	}
	p, errs := c.check(path, bp.Dir, files)
	if p == nil {
		return nil, fmt.Errorf("type-checking %s for darwin: %w", path, errors.Join(errs...))
	}
	// Errors inside a dependency are cgo's shadows (C values have no type under
	// FakeImportC); its exported Go API is complete all the same, and the mutation
	// test proves calls into it are still checked.
	if len(errs) > 0 {
		c.depErrs[path] = len(errs)
	}
	c.pkgs[path] = p
	return p, nil
}

func (c *darwinChecker) check(path, dir string, files []string) (*types.Package, []error) {
	var parsed []*ast.File
	for _, f := range files {
		af, err := parser.ParseFile(c.fset, f, nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, []error{err}
		}
		parsed = append(parsed, af)
	}
	var errs []error
	conf := types.Config{
		Importer:    importerAt{c, dir},
		FakeImportC: true,
		Error:       func(err error) { errs = append(errs, err) },
	}
	p, _ := conf.Check(path, c.fset, parsed, nil)
	return p, errs
}

// importerAt resolves a package's imports from its own directory (module mode).
type importerAt struct {
	c   *darwinChecker
	dir string
}

func (i importerAt) Import(path string) (*types.Package, error) {
	return i.c.ImportFrom(path, i.dir, 0)
}
func (i importerAt) ImportFrom(path, _ string, mode types.ImportMode) (*types.Package, error) {
	return i.c.ImportFrom(path, i.dir, mode)
}

// vzSourceDir downloads (if needed) the binding and checks its version.
func vzSourceDir(t *testing.T) {
	t.Helper()
	out, err := exec.Command("go", "mod", "download", "-json", vzModule).Output()
	if err != nil {
		t.Fatalf("go mod download %s: %v", vzModule, err)
	}
	var m struct{ Version, Dir string }
	if err := json.Unmarshal(out, &m); err != nil || m.Dir == "" {
		t.Fatalf("go mod download %s: %q %v", vzModule, out, err)
	}
	if m.Version != "v3.6.0" {
		t.Fatalf("%s is %s in go.mod; this check was written for v3.6.0", vzModule, m.Version)
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
	files := darwinFiles(t)
	if !strings.Contains(strings.Join(files, " "), "vz_darwin.go") {
		t.Fatalf("darwin build of vmm/vz lacks vz_darwin.go: %v", files)
	}
	c := checker(t)
	dir, _ := os.Getwd()
	p, errs := c.check("github.com/openshell/openshell/vmm/vz", dir, files)
	for _, err := range errs {
		t.Error(err)
	}
	if p == nil || p.Scope().Lookup("Machine") == nil {
		t.Fatal("the darwin build of vmm/vz has no Machine type")
	}
	if c.pkgs[vzModule] == nil {
		t.Fatal("the binding was not type-checked")
	}
	// The darwin-only conformance test (run by the macOS workflow) against it too.
	c.pkgs["github.com/openshell/openshell/vmm/vz"] = p
	var xtest []string
	for _, f := range darwinBuild(t).XTestGoFiles {
		if strings.HasSuffix(f, "_darwin_test.go") {
			xtest = append(xtest, filepath.Join(dir, f))
		}
	}
	if len(xtest) == 0 {
		t.Fatal("no darwin test files found")
	}
	if _, errs := c.check("github.com/openshell/openshell/vmm/vz_test", dir, xtest); len(errs) > 0 {
		for _, err := range errs {
			t.Error(err)
		}
	}
	t.Logf("type-checked %d packages for darwin/arm64; cgo-only errors tolerated in dependencies: %v", len(c.pkgs), c.depErrs)
}

// TestDarwinTypeCheckCatchesWrongCall proves the check can fail: the same files with
// one call changed to a wrong signature must not type-check.
func TestDarwinTypeCheckCatchesWrongCall(t *testing.T) {
	vzSourceDir(t)
	dir, _ := os.Getwd()
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
			_, errs := checker(t).check("github.com/openshell/openshell/vmm/vz", dir, files)
			all := errors.Join(errs...)
			if len(errs) == 0 || !strings.Contains(all.Error(), m.want) || strings.Contains(all.Error(), "could not import") {
				t.Fatalf("mutated call type-checked (errors %v), want %q", errs, m.want)
			}
			t.Logf("caught: %v", errs[0])
		})
	}
}
