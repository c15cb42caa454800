package vm_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/internal/rundir"
	"github.com/openshell/openshell/internal/testenv"
	"github.com/openshell/openshell/internal/testenv/vmhost"
)

// TestVMQuickstartLongHome is a new user's first VM sandbox, with a 200-byte HOME (the
// state dir defaults to HOME/.local/state/openshell, far too long for a Unix socket
// path under it) and an image just built into the local Docker store, named bare:
// gateway start --drivers vm → sandbox create --from openshell-test/busybox with no
// command (the image has no /bin/bash) → READY and still READY later → exec → delete,
// nothing left behind.
func TestVMQuickstartLongHome(t *testing.T) {
	if testing.Short() {
		t.Skip("builds every binary and boots a VM")
	}
	vmhost.Require(t)
	const image = "openshell-test/busybox"
	out, err := exec.Command("docker", "image", "inspect", "--format", "{{.Id}}", image).CombinedOutput()
	testenv.Require(t, err == nil, "image "+image+" not in the local Docker store: run scripts/setup-docker.sh and scripts/testimage/build.sh ("+strings.TrimSpace(string(out))+")")

	e := newEnv(t)
	home := filepath.Join(e.tmp, "h")
	home += "/" + strings.Repeat("x", 200-len(home)-1)
	if len(home) != 200 {
		t.Fatalf("HOME is %d bytes, want 200", len(home))
	}
	if err := os.MkdirAll(home, 0o700); err != nil {
		t.Fatal(err)
	}
	var environ []string
	for _, kv := range e.environ {
		if !strings.HasPrefix(kv, "HOME=") && !strings.HasPrefix(kv, "XDG_STATE_HOME=") {
			environ = append(environ, kv)
		}
	}
	e.environ = append(environ, "HOME="+home)
	e.gwState = filepath.Join(home, ".local", "state", "openshell", "gateway")

	cfg := filepath.Join(e.tmp, "gateway.toml")
	if err := os.WriteFile(cfg, []byte("[drivers.vm]\ncpus = 1\nmemory_mib = 512\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.cli("gateway", "start", "--drivers", "vm", "--port", strconv.Itoa(freePort(t)), "--config", cfg)
	t.Cleanup(func() {
		e.cliMayFail("gateway", "stop")
		e.killLeftovers()
	})
	if _, err := os.Stat(filepath.Join(e.gwState, "vm-driver")); err != nil {
		t.Fatalf("the gateway does not use the default state dir under HOME: %v", err)
	}

	t0 := time.Now()
	e.cli("sandbox", "create", "--name", sandbox, "--from", image, "--timeout", cliTimeout.String())
	t.Logf("create → READY took %v (HOME %d bytes)", time.Since(t0).Round(time.Millisecond), len(home))
	// The default shell runs on; a sandbox whose main process failed would be ERROR by now.
	time.Sleep(10 * time.Second)
	e.waitPhase("READY")
	out2 := e.cli("sandbox", "exec", "-n", sandbox, "--", "sh", "-c", "test ! -e /bin/bash && echo vm-no-bash-$((6*7))")
	if !strings.Contains(out2, "vm-no-bash-42") {
		t.Fatalf("exec in the busybox VM: %q", out2)
	}
	// No socket under the long state dir: they all live in the short runtime dir.
	_ = filepath.Walk(e.gwState, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode()&os.ModeSocket != 0 {
			t.Errorf("socket under the state dir: %s (%d bytes)", p, len(p))
		}
		return nil
	})
	e.deleteAndCheckClean(t, sandbox)
	// The runtime dirs go too: the sandboxes' once the last is deleted, the driver's
	// socket dir when the gateway stops.
	if _, err := os.Stat(rundir.For(filepath.Join(e.gwState, "vm-driver", "sb"))); err == nil {
		t.Errorf("sandbox runtime dir %s left after the last delete", rundir.For(filepath.Join(e.gwState, "vm-driver", "sb")))
	}
	e.cli("gateway", "stop")
	if _, err := os.Stat(rundir.For(filepath.Join(e.gwState, "vm-driver"))); err == nil {
		t.Errorf("driver runtime dir %s left after gateway stop", rundir.For(filepath.Join(e.gwState, "vm-driver")))
	}
}
