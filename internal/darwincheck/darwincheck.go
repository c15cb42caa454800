// Package darwincheck type-checks Go packages as they compile for darwin/arm64, on
// any host. macOS users run the VM driver (vz backend) but most of CI runs on Linux, where
// `GOOS=darwin go build` stops at the Virtualization.framework binding: it is cgo and
// cannot cross-build. Here every package is checked from source with go/types and cgo
// faked (FakeImportC), so the binding's Go API is complete and the packages above it
// are checked too; only errors cgo itself causes inside a cgo package are left for the
// caller to tolerate. Tests use it; no binary imports it.
package darwincheck

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"go/types"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
)

// GOOS and GOARCH are the platform packages are checked for.
const (
	GOOS   = "darwin"
	GOARCH = "arm64"
)

// VZBinding is the Virtualization.framework binding (Code-Hex/vz, the version in
// go.mod): the one cgo package the VM driver imports on macOS.
const VZBinding = "github.com/Code-Hex/vz/v3"

// Shared is a Graph loaded once for a test binary's tests (listing and checking the
// standard library from source takes seconds).
type Shared struct {
	once sync.Once
	g    *Graph
	err  error
}

// Load returns the graph of patterns, loaded at the first call; later calls return
// the same graph whatever their patterns.
func (s *Shared) Load(dir string, patterns ...string) (*Graph, error) {
	s.once.Do(func() { s.g, s.err = Load(dir, patterns...) })
	return s.g, s.err
}

// Graph is a set of packages as `go list -deps` lists them for darwin/arm64 with cgo
// enabled, with their type-checked form once Check has run.
type Graph struct {
	fset  *token.FileSet
	pkgs  map[string]*pkg
	order []string // go list order: dependencies first
	once  sync.Once
}

// pkg is one `go list -json` entry (the fields used here) and its check result.
type pkg struct {
	ImportPath string
	Dir        string
	GoFiles    []string
	CgoFiles   []string
	Imports    []string
	ImportMap  map[string]string
	Error      *struct{ Err string }

	done  chan struct{} // closed when types and errs are set
	types *types.Package
	errs  []error
}

// Load lists patterns and all their dependencies from dir, as they build for
// darwin/arm64 with cgo.
func Load(dir string, patterns ...string) (*Graph, error) {
	args := append([]string{"list", "-e", "-deps", "-json=ImportPath,Dir,GoFiles,CgoFiles,Imports,ImportMap,Error"}, patterns...)
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOOS="+GOOS, "GOARCH="+GOARCH, "CGO_ENABLED=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list for %s/%s: %v: %s", GOOS, GOARCH, err, stderr.Bytes())
	}
	g := &Graph{fset: token.NewFileSet(), pkgs: map[string]*pkg{}}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		p := &pkg{done: make(chan struct{})}
		if err := dec.Decode(p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("go list output: %w", err)
		}
		g.pkgs[p.ImportPath] = p
		g.order = append(g.order, p.ImportPath)
	}
	return g, nil
}

// Packages returns the import paths of every listed package, dependencies first.
func (g *Graph) Packages() []string { return append([]string(nil), g.order...) }

// Check type-checks every listed package (once; later calls return the same result)
// and returns the errors of each package that has some, keyed by import path.
func (g *Graph) Check() map[string][]error {
	g.once.Do(func() {
		sem := make(chan struct{}, runtime.GOMAXPROCS(0))
		for _, path := range g.order {
			p := g.pkgs[path]
			go func() {
				defer close(p.done)
				// Waiting for imports before taking a slot: a slot is never held by a
				// package that cannot make progress.
				for _, imp := range p.Imports {
					if d := g.pkgs[imp]; d != nil {
						<-d.done
					}
				}
				sem <- struct{}{}
				defer func() { <-sem }()
				if p.Error != nil {
					p.errs = append(p.errs, errors.New(p.Error.Err))
				}
				files := make([]string, 0, len(p.GoFiles)+len(p.CgoFiles))
				for _, f := range append(append([]string(nil), p.GoFiles...), p.CgoFiles...) {
					files = append(files, filepath.Join(p.Dir, f))
				}
				t, errs := g.check(path, files, p.ImportMap)
				p.types, p.errs = t, append(p.errs, errs...)
			}()
		}
		for _, path := range g.order {
			<-g.pkgs[path].done
		}
	})
	failed := map[string][]error{}
	for path, p := range g.pkgs {
		if len(p.errs) > 0 {
			failed[path] = p.errs
		}
	}
	return failed
}

// Package returns the checked package at path (nil before Check, or when its files
// could not be parsed).
func (g *Graph) Package(path string) *types.Package {
	if p := g.pkgs[path]; p != nil {
		return p.types
	}
	return nil
}

// CheckFiles type-checks files as the package path, resolving their imports to the
// checked packages of the graph (Check runs first if it has not). It serves files
// that are not part of a listed package's build: a test's own files, a mutated copy.
func (g *Graph) CheckFiles(path string, files []string) (*types.Package, []error) {
	g.Check()
	return g.check(path, files, nil)
}

func (g *Graph) check(path string, files []string, importMap map[string]string) (*types.Package, []error) {
	var parsed []*ast.File
	var errs []error
	for _, f := range files {
		af, err := parser.ParseFile(g.fset, f, nil, parser.SkipObjectResolution)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		parsed = append(parsed, af)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	conf := types.Config{
		Importer:    importer{g, importMap},
		FakeImportC: true,
		Sizes:       types.SizesFor("gc", GOARCH),
		Error:       func(err error) { errs = append(errs, err) },
	}
	p, _ := conf.Check(path, g.fset, parsed, nil)
	return p, errs
}

// importer resolves one package's imports (through its ImportMap: the standard
// library's vendored packages) to packages already checked.
type importer struct {
	g         *Graph
	importMap map[string]string
}

func (i importer) Import(path string) (*types.Package, error) {
	if path == "unsafe" {
		return types.Unsafe, nil
	}
	if to, ok := i.importMap[path]; ok {
		path = to
	}
	p := i.g.pkgs[path]
	if p == nil {
		return nil, fmt.Errorf("%s is not among the listed packages", path)
	}
	<-p.done
	if p.types == nil {
		return nil, fmt.Errorf("%s did not type-check: %w", path, errors.Join(p.errs...))
	}
	return p.types, nil
}

// CgoOnly reports whether err is one that faking cgo causes by itself: a value that
// comes from C has no Go type under FakeImportC, and using it is reported against
// that "invalid type". Any other error in a cgo package is real.
func CgoOnly(err error) bool {
	var terr types.Error
	return errors.As(err, &terr) && strings.Contains(terr.Msg, "invalid type")
}
