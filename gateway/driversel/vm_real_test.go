package driversel

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/openshell/openshell/internal/rundir"
)

// TestVMDriverRealProcess starts the real openshell-driver-vm through the vm factory
// (private 0700 socket, --expected-peer-pid = this process), talks to it, and checks
// that Close stops it by PID.
func TestVMDriverRealProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("builds openshell-driver-vm")
	}
	tmp, err := os.MkdirTemp("", "vmd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	bin := filepath.Join(tmp, VMBinaryName)
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/openshell/openshell/cmd/openshell-driver-vm").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d, err := Build(ctx, "vm", DriverEnv{StateDir: tmp, GatewayPort: 17999, Table: map[string]any{"binary": bin, "cpus": int64(1)}})
	if err != nil {
		t.Fatal(err)
	}
	vd := d.(*vmDriver)
	pid := vd.PID()
	caps, err := d.Capabilities(ctx)
	if err != nil {
		d.Close()
		t.Fatal(err)
	}
	if caps.GetDriverName() == "" {
		t.Errorf("capabilities = %v", caps)
	}
	if _, err := d.List(ctx); err != nil {
		t.Errorf("List: %v", err)
	}
	st, err := os.Stat(filepath.Join(tmp, "vm-driver"))
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("socket dir: %v %v", st, err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if run := rundir.For(filepath.Join(tmp, "vm-driver")); fileExists(run) {
		t.Errorf("runtime dir %s left after Close", run)
		os.RemoveAll(run)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("driver process %d still running after Close", pid)
		syscall.Kill(pid, syscall.SIGKILL)
	}
}
