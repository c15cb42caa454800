// Package vmhost requires, for tests that boot VM sandboxes, what that needs on the
// host. It is apart from testenv because it asks the images package for the guest
// kernel, and that package's own tests use testenv.
package vmhost

import (
	"fmt"
	"testing"

	"github.com/openshell/openshell/images/bundle"
	"github.com/openshell/openshell/internal/testenv"
)

// Require skips (locally) or fails (under CI) unless QEMU, mkfs.ext4, the Go
// toolchain (the tests build binaries) and the guest kernel are here.
func Require(t testing.TB) {
	t.Helper()
	testenv.RequireCommand(t, "qemu-system-x86_64", "run scripts/setup-vm-host.sh")
	testenv.RequireCommand(t, "mkfs.ext4", "run scripts/setup-vm-host.sh")
	testenv.RequireCommand(t, "go", "install Go")
	_, kerr := bundle.FindKernel("")
	testenv.Require(t, kerr == nil, fmt.Sprintf("guest kernel: %v; run scripts/setup-vm-host.sh", kerr))
}
