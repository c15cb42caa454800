package kubetest

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// LockSandboxCRD serialises tests across packages (go test runs packages in parallel)
// around the cluster-wide Sandbox CRD: a test that rewrites the CRD takes it exclusive,
// a test that only creates Sandboxes takes it shared, so no Sandbox is written while
// the CRD serves a different set of versions. The lock is released at the test's end.
func (c *Cluster) LockSandboxCRD(t testing.TB, exclusive bool) {
	t.Helper()
	path := filepath.Join(filepath.Dir(c.Kubeconfig), "test-sandbox-crd.lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatalf("kubetest: open the Sandbox CRD test lock %s: %v", path, err)
	}
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	if err := syscall.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		t.Fatalf("kubetest: lock %s: %v", path, err)
	}
	t.Cleanup(func() { f.Close() }) // closing the last descriptor releases the lock
}
