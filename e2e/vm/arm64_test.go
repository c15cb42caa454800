package vm_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/openshell/openshell/drivers/vm/ocilayout"
	"github.com/openshell/openshell/images/bundle"
	"github.com/openshell/openshell/internal/testenv"
	"github.com/openshell/openshell/internal/testenv/vmhost"
	"github.com/openshell/openshell/vmm/channel"
)

// TestVMARM64Exec is the guest half of the macOS path: the arm64 bundle (Debian's
// arm64 Image, the supervisor built for linux/arm64 as init, an arm64 image) boots
// under qemu-system-aarch64 -M virt (TCG) through the real gateway and VM driver,
// and a sandbox command runs in it over the same channel protocol.
func TestVMARM64Exec(t *testing.T) {
	if testing.Short() {
		t.Skip("builds every binary and boots an arm64 VM")
	}
	vmhost.Require(t)
	testenv.RequireCommand(t, "qemu-system-aarch64", "run scripts/setup-vm-host.sh (installs qemu-system-arm)")
	kernel, err := bundle.FindKernelFor("", "arm64")
	testenv.Require(t, err == nil, fmt.Sprintf("arm64 guest kernel: %v (run scripts/setup-vm-host.sh)", err))
	armBusybox := filepath.Join(channel.VMDir(), "arm64", "busybox")
	_, err = os.Stat(armBusybox)
	testenv.Require(t, err == nil, "arm64 busybox missing: run scripts/setup-vm-host.sh")
	hostBusybox := requireStaticBusybox(t)

	r := &vmRun{env: newEnv(t)}
	sup := filepath.Join(r.tmp, "openshell-sandbox-arm64")
	build := exec.Command("go", "build", "-o", sup, repo+"/cmd/openshell-sandbox")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build arm64 supervisor: %v\n%s", err, out)
	}
	layer := filepath.Join(r.tmp, "layer-arm64.tar")
	if err := writeBusyboxRootfsWith(layer, armBusybox, hostBusybox); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(r.tmp, "image-arm64")
	if _, err := ocilayout.Write(dir, layer, ocilayout.Options{
		Tag: "arm64", Env: []string{"PATH=/bin:/usr/bin:/sbin:/usr/sbin"}, WorkingDir: "/sandbox", User: "sandbox", Cmd: []string{"/bin/sh"},
	}); err != nil {
		t.Fatal(err)
	}
	r.image = "oci-layout:" + dir + ":arm64"
	r.port = freePort(t)
	r.cfg = filepath.Join(r.tmp, "gateway.toml")
	conf := fmt.Sprintf("[drivers.vm]\ncpus = 1\nmemory_mib = 512\nbackend = \"qemu\"\nkernel = %s\nsupervisor_binary = %s\n",
		strconv.Quote(kernel), strconv.Quote(sup))
	if err := os.WriteFile(r.cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	r.startGateway()
	t.Cleanup(func() {
		r.cliMayFail("gateway", "stop")
		r.killLeftovers()
	})

	const name = "e2e-arm64"
	t0 := time.Now()
	r.cli("sandbox", "create", "--name", name, "--from", r.image, "--timeout", cliTimeout.String(), "--", "sleep", "1000000")
	t.Logf("arm64 create → READY took %v", time.Since(t0).Round(time.Millisecond))
	t1 := time.Now()
	if got := r.execIn(name, "uname", "-m"); got != "aarch64" {
		t.Fatalf("uname -m in the arm64 sandbox = %q, want aarch64", got)
	}
	if got := r.execIn(name, "sh", "-c", "echo ran as $(id -un) in $(pwd)"); got != "ran as sandbox in /sandbox" {
		t.Fatalf("command output %q", got)
	}
	t.Logf("two execs took %v", time.Since(t1).Round(time.Millisecond))
	r.deleteAndWaitGone(name, 2*time.Minute)
}
