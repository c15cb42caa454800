// Package testenv decides whether an integration test can run here. Real components
// (QEMU, dockerd, PostgreSQL, …) are installed by the project's scripts; locally a
// missing one skips the test with the reason and the script that installs it, but
// under CI=true the same absence fails the test, because CI ran those scripts.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run under CI (CI=true).
func InCI() bool { return os.Getenv("CI") == "true" }

// Require skips (locally) or fails (under CI) the test when ok is false.
func Require(t testing.TB, ok bool, reason string) {
	t.Helper()
	if ok {
		return
	}
	if InCI() {
		t.Fatalf("prerequisite missing under CI=true: %s", reason)
	}
	t.Skipf("skipped: %s", reason)
}

// RequireCommand requires an executable on PATH; fix says how to install it.
func RequireCommand(t testing.TB, name, fix string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	Require(t, err == nil, name+" not found on PATH; "+fix)
	return p
}

// RequireRoot requires uid 0 (for tests that create network namespaces, mounts, …).
func RequireRoot(t testing.TB) {
	t.Helper()
	Require(t, os.Geteuid() == 0, "test needs root")
}
