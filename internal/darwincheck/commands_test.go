package darwincheck_test

import (
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/openshell/openshell/internal/darwincheck"
)

// commands are the binaries macOS users run.
var commands = []string{
	"github.com/openshell/openshell/cmd/openshell",
	"github.com/openshell/openshell/cmd/openshell-gateway",
	"github.com/openshell/openshell/cmd/openshell-driver-vm",
}

var shared darwincheck.Shared

func commandsGraph(t *testing.T) *darwincheck.Graph {
	t.Helper()
	g, err := shared.Load(".", commands...)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// TestCommandsTypeCheckForDarwin: every package the commands import, as it compiles
// for darwin/arm64, type-checks. A Linux-only call (SO_PEERCRED, pidfd_open, a
// Linux-only constant) in any of them fails here, naming the package.
func TestCommandsTypeCheckForDarwin(t *testing.T) {
	g := commandsGraph(t)
	failed := g.Check()
	for _, path := range slices.Sorted(maps.Keys(failed)) {
		errs := failed[path]
		if path == darwincheck.VZBinding {
			errs = slices.DeleteFunc(slices.Clone(errs), darwincheck.CgoOnly)
			if len(errs) == 0 {
				t.Logf("%s: %d cgo-only errors tolerated, first: %v", path, len(failed[path]), failed[path][0])
				continue
			}
		}
		for i, err := range errs {
			if i == 10 {
				t.Errorf("%s: %d more errors", path, len(errs)-i)
				break
			}
			t.Errorf("%s does not compile for %s/%s: %v", path, darwincheck.GOOS, darwincheck.GOARCH, err)
		}
	}
	for _, c := range commands {
		if g.Package(c) == nil {
			t.Errorf("%s was not checked", c)
		}
	}
	// vmm/vz imports the binding only in its darwin files: present, the graph is macOS's.
	if g.Package(darwincheck.VZBinding) == nil {
		t.Errorf("%s is not in the graph: not the darwin build", darwincheck.VZBinding)
	}
	t.Logf("type-checked %d packages for %s/%s", len(g.Packages()), darwincheck.GOOS, darwincheck.GOARCH)
}

// TestDarwinCheckCatchesLinuxOnlyCalls proves the check can fail: the calls the VM
// driver's peer check once made on every platform do not type-check for darwin.
func TestDarwinCheckCatchesLinuxOnlyCalls(t *testing.T) {
	g := commandsGraph(t)
	src := `package probe

import "golang.org/x/sys/unix"

func peer(fd int) (int32, error) {
	c, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return 0, err
	}
	_, err = unix.PidfdOpen(int(c.Pid), 0)
	return c.Pid, err
}
`
	file := filepath.Join(t.TempDir(), "probe.go")
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errs := g.CheckFiles("example.com/probe", []string{file})
	var all []string
	for _, err := range errs {
		all = append(all, err.Error())
	}
	got := strings.Join(all, "\n")
	for _, want := range []string{"undefined: unix.GetsockoptUcred", "undefined: unix.SO_PEERCRED", "undefined: unix.PidfdOpen"} {
		if !strings.Contains(got, want) {
			t.Errorf("Linux-only call type-checked for darwin: want %q among errors:\n%s", want, got)
		}
	}
}
