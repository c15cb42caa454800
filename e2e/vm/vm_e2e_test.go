// Package vm_test is the VM driver's end-to-end test through the real binaries:
// `openshell gateway start --drivers vm` (which starts openshell-driver-vm, which
// re-executes itself as one runner per VM, which boots QEMU with openshell-sandbox as
// the guest's init), then the CLI: create → Ready → exec → stop → start (the file
// written before the stop is still there) → delete → nothing left behind.
package vm_test

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/openshell/openshell/drivers/vm/ocilayout"
	"github.com/openshell/openshell/internal/procstat"
	"github.com/openshell/openshell/internal/testenv"
	"github.com/openshell/openshell/internal/testenv/vmhost"
)

const (
	repo       = "github.com/openshell/openshell"
	sandbox    = "e2e-vm"
	cliTimeout = 6 * time.Minute // TCG on two shared cores
)

// binaries the test builds, by command directory; static ones without cgo, as
// the Makefile builds them on Linux.
var binaries = []struct {
	name   string
	static bool
}{
	{"openshell", true},
	{"openshell-gateway", false},
	{"openshell-driver-vm", false},
	{"openshell-sandbox", true},
}

type env struct {
	t        *testing.T
	tmp, bin string
	gwState  string
	environ  []string
}

func TestVMEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds every binary and boots VMs")
	}
	vmhost.Require(t)
	busybox := requireStaticBusybox(t)

	e := newEnv(t)
	image := e.buildImage(busybox)
	port := freePort(t)

	cfg := filepath.Join(e.tmp, "gateway.toml")
	os.WriteFile(cfg, []byte("[drivers.vm]\ncpus = 1\nmemory_mib = 512\n"), 0o600)
	e.cli("gateway", "start", "--drivers", "vm", "--port", strconv.Itoa(port), "--state-dir", e.gwState, "--config", cfg)
	t.Cleanup(func() {
		e.cliMayFail("gateway", "stop")
		e.killLeftovers()
	})

	t0 := time.Now()
	e.cli("sandbox", "create", "--name", sandbox, "--from", image, "--timeout", cliTimeout.String(), "--", "sleep", "1000000")
	t.Logf("create → Ready took %v", time.Since(t0))
	e.checkGuestClock(sandbox)

	// The guest's boot id tells a re-adopted VM from a rebooted one.
	boot0 := strings.TrimSpace(e.cli("sandbox", "exec", "-n", sandbox, "--", "cat", "/proc/sys/kernel/random/boot_id"))
	if len(boot0) != 36 {
		t.Fatalf("boot id %q is not a UUID", boot0)
	}
	if h := strings.TrimSpace(e.cli("sandbox", "exec", "-n", sandbox, "--", "hostname")); h != sandbox {
		t.Errorf("guest hostname %q, want the sandbox name %q", h, sandbox)
	}

	// A gateway restart (which stops the driver process by PID) leaves the VM running;
	// the new gateway's driver re-adopts it and the supervisor reconnects.
	pids := e.vmPIDs()
	if len(pids) < 2 {
		t.Fatalf("runner/QEMU pids not recorded: %v", pids)
	}
	e.cli("gateway", "stop")
	for _, p := range pids {
		if syscall.Kill(p, 0) != nil {
			t.Fatalf("process %d of the VM died with the gateway", p)
		}
	}
	e.cli("gateway", "start", "--drivers", "vm", "--port", strconv.Itoa(port), "--state-dir", e.gwState, "--config", cfg)
	e.waitPhase("READY")
	if after := e.vmPIDs(); fmt.Sprint(after) != fmt.Sprint(pids) {
		t.Errorf("re-adoption changed the VM processes: %v → %v", pids, after)
	}

	var boot1 string
	t.Run("ExecWritesFile", func(t *testing.T) {
		out := e.cli("sandbox", "exec", "-n", sandbox, "--", "sh", "-c", "echo kept-across-restart > /sandbox/persist.txt && sync && cat /sandbox/persist.txt && cat /proc/sys/kernel/random/boot_id")
		lines := strings.Fields(out)
		if len(lines) < 2 || lines[0] != "kept-across-restart" {
			t.Fatalf("exec output %q", out)
		}
		boot1 = lines[1]
		if boot1 != boot0 {
			t.Errorf("boot id changed across the gateway restart (%s → %s): the VM rebooted", boot0, boot1)
		}
	})

	e.cli("sandbox", "stop", sandbox)
	e.waitPhase("STOPPED")
	if n := len(e.qemuProcs()); n != 0 {
		t.Errorf("%d VM processes still run after stop: %v", n, e.qemuProcs())
	}

	e.cli("sandbox", "start", sandbox, "--timeout", cliTimeout.String())
	t.Run("FileSurvivesStopStart", func(t *testing.T) {
		if boot1 == "" {
			t.Fatal("ExecWritesFile did not record a boot id; nothing to compare")
		}
		out := e.cli("sandbox", "exec", "-n", sandbox, "--", "sh", "-c", "cat /sandbox/persist.txt && cat /proc/sys/kernel/random/boot_id")
		lines := strings.Fields(out)
		if len(lines) < 2 || lines[0] != "kept-across-restart" {
			t.Fatalf("after stop/start the file is gone: %q", out)
		}
		if lines[1] == boot1 {
			t.Errorf("boot id unchanged across stop/start (%s): the VM did not reboot", boot1)
		}
	})

	e.deleteAndCheckClean(t, sandbox)
}

// deleteAndCheckClean deletes the sandbox, waits (up to 2 min) until the gateway
// no longer knows it, and checks that neither its driver state nor a QEMU or
// runner process is left behind.
func (e *env) deleteAndCheckClean(t *testing.T, name string) {
	t.Helper()
	e.cli("sandbox", "delete", name)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, err := e.cliMayFail("sandbox", "get", name)
		if err != nil && strings.Contains(strings.ToLower(out), "not found") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox still there 2 min after delete: %s", out)
		}
		time.Sleep(500 * time.Millisecond)
	}
	time.Sleep(time.Second)
	if ents, _ := os.ReadDir(filepath.Join(e.gwState, "vm-driver", "sb")); len(ents) != 0 {
		t.Errorf("sandbox state left behind: %v", ents)
	}
	if p := e.qemuProcs(); len(p) != 0 {
		t.Errorf("processes left behind: %v", p)
	}
}

func newEnv(t *testing.T) *env {
	tmp, err := os.MkdirTemp("", "ose-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	e := &env{t: t, tmp: tmp, bin: filepath.Join(tmp, "bin"), gwState: filepath.Join(tmp, "gw")}
	e.environ = append(os.Environ(),
		"HOME="+tmp, "XDG_CONFIG_HOME="+filepath.Join(tmp, "config"), "XDG_STATE_HOME="+filepath.Join(tmp, "state"),
		"XDG_CACHE_HOME="+filepath.Join(tmp, "cache"), "OPENSHELL_GATEWAY_BIN="+filepath.Join(e.bin, "openshell-gateway"))
	for _, b := range binaries {
		if _, err := os.Stat(filepath.Join(moduleRoot(t), "cmd", b.name)); err != nil {
			testenv.Require(t, false, "cmd/"+b.name+" does not exist in this tree yet")
		}
		cmd := exec.Command("go", "build", "-o", filepath.Join(e.bin, b.name), repo+"/cmd/"+b.name)
		cmd.Env = os.Environ()
		if b.static {
			cmd.Env = append(cmd.Env, "CGO_ENABLED=0")
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", b.name, err, out)
		}
	}
	return e
}

func moduleRoot(t *testing.T) string {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		t.Fatalf("go list -m: %v", err)
	}
	return strings.TrimSpace(string(out))
}

func (e *env) run(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(e.bin, "openshell"), args...)
	cmd.Env = e.environ
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		return "", err
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), err
	case <-time.After(cliTimeout + time.Minute):
		cmd.Process.Kill()
		<-done
		return out.String(), fmt.Errorf("openshell %v timed out", args)
	}
}

// cli runs the CLI and fails the test (with the gateway and driver logs) on error.
func (e *env) cli(args ...string) string {
	e.t.Helper()
	out, err := e.run(args...)
	e.t.Logf("$ openshell %s\n%s", strings.Join(args, " "), out)
	if err != nil {
		e.dumpLogs()
		e.t.Fatalf("openshell %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func (e *env) cliMayFail(args ...string) (string, error) {
	out, err := e.run(args...)
	e.t.Logf("$ openshell %s (may fail)\n%s", strings.Join(args, " "), out)
	return out, err
}

func (e *env) dumpLogs() {
	filepath.Walk(e.gwState, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && strings.HasSuffix(p, ".log") {
			b, _ := os.ReadFile(p)
			if len(b) > 6000 {
				b = b[len(b)-6000:]
			}
			e.t.Logf("==> %s <==\n%s", p, b)
		}
		return nil
	})
}

func (e *env) waitPhase(want string) {
	e.t.Helper()
	deadline := time.Now().Add(cliTimeout)
	var last string
	for time.Now().Before(deadline) {
		out, err := e.run("sandbox", "get", sandbox, "-o", "json")
		if err == nil {
			var sb struct {
				Status struct {
					Phase string `json:"phase"`
				} `json:"status"`
			}
			if json.Unmarshal([]byte(out), &sb) == nil {
				last = sb.Status.Phase
				if strings.Contains(strings.ToUpper(last), want) {
					return
				}
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	e.dumpLogs()
	e.t.Fatalf("sandbox %s not %s within %v (last phase %q)", sandbox, want, cliTimeout, last)
}

// qemuProcs lists live processes whose command line mentions this test's directory
// (QEMU, the vsock backend, runners).
func (e *env) qemuProcs() []string {
	return procsUnder(filepath.Join(e.gwState, "vm-driver", "sb"))
}

// vmPIDs returns the runner and QEMU pids recorded in the sandbox's state.json.
func (e *env) vmPIDs() []int {
	var pids []int
	files, _ := filepath.Glob(filepath.Join(e.gwState, "vm-driver", "sb", "*", "state.json"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var rec struct {
			RunnerPID int `json:"runner_pid"`
			VMMPID    int `json:"vmm_pid"`
		}
		if json.Unmarshal(b, &rec) == nil {
			pids = append(pids, rec.RunnerPID, rec.VMMPID)
		}
	}
	return pids
}

// killSessions SIGKILLs every process of each VM runner's session under the gateway's
// state (runner, QEMU, vsock backend): the vsock backend's command line names only the
// runtime dir, which the search of killLeftovers by command line does not find.
func (e *env) killSessions() {
	for _, rec := range e.vmRecords() {
		if rec.RunnerPID <= 1 {
			continue
		}
		for _, pid := range procstat.SessionMembers(rec.RunnerPID, 0) {
			e.t.Logf("cleanup: killing pid %d of VM runner session %d", pid, rec.RunnerPID)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// killLeftovers SIGKILLs what a failed run left (by PID): the runners' sessions from
// their records, then any process whose command line names the driver's sandboxes.
func (e *env) killLeftovers() {
	e.killSessions()
	for _, p := range e.qemuProcs() {
		pid, _ := strconv.Atoi(strings.Fields(p)[0])
		e.t.Logf("cleanup: killing leftover %s", p)
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// buildImage makes a busybox OCI layout (user sandbox, workdir /sandbox).
func (e *env) buildImage(busybox string) string {
	e.t.Helper()
	layer := filepath.Join(e.tmp, "layer.tar")
	if err := writeBusyboxRootfs(layer, busybox); err != nil {
		e.t.Fatal(err)
	}
	dir := filepath.Join(e.tmp, "image")
	if _, err := ocilayout.Write(dir, layer, ocilayout.Options{
		Tag: "e2e", Env: []string{"PATH=/bin:/usr/bin:/sbin:/usr/sbin"}, WorkingDir: "/sandbox", User: "sandbox", Cmd: []string{"/bin/sh"},
	}); err != nil {
		e.t.Fatal(err)
	}
	return "oci-layout:" + dir + ":e2e"
}

func writeBusyboxRootfs(path, busybox string) error {
	return writeBusyboxRootfsWith(path, busybox, busybox)
}

// writeBusyboxRootfsWith takes the applet list from lister, a busybox this host can
// run (busybox may be built for another architecture).
func writeBusyboxRootfsWith(path, busybox, lister string) error {
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	list, err := exec.Command(lister, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	mt := time.Unix(0, 0)
	hdr := func(h *tar.Header) error {
		h.ModTime = mt
		return tw.WriteHeader(h)
	}
	for _, d := range []string{"bin/", "etc/", "tmp/", "root/", "proc/", "sys/", "dev/", "run/", "var/", "usr/"} {
		mode := int64(0o755)
		if d == "tmp/" {
			mode = 0o1777
		}
		if err := hdr(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: mode}); err != nil {
			return err
		}
	}
	if err := hdr(&tar.Header{Typeflag: tar.TypeDir, Name: "sandbox/", Mode: 0o755, Uid: 1000, Gid: 1000}); err != nil {
		return err
	}
	if err := hdr(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bb))}); err != nil {
		return err
	}
	if _, err := tw.Write(bb); err != nil {
		return err
	}
	for _, a := range strings.Fields(string(list)) {
		if a == "busybox" || strings.ContainsAny(a, "/") {
			continue
		}
		if err := hdr(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777}); err != nil {
			return err
		}
	}
	for _, l := range []struct{ name, target string }{{"sbin", "bin"}, {"usr/bin", "../bin"}, {"usr/sbin", "../bin"}} {
		if err := hdr(&tar.Header{Typeflag: tar.TypeSymlink, Name: l.name, Linkname: l.target, Mode: 0o777}); err != nil {
			return err
		}
	}
	for name, body := range map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000:sandbox:/sandbox:/bin/sh\n",
		"etc/group":  "root:x:0:\nsandbox:x:1000:\n",
	} {
		if err := hdr(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(body))}); err != nil {
			return err
		}
		if _, err := io.WriteString(tw, body); err != nil {
			return err
		}
	}
	return tw.Close()
}

// requireStaticBusybox returns the path of a statically linked busybox, from which the
// tests build their minimal image.
func requireStaticBusybox(t *testing.T) string {
	t.Helper()
	busybox, berr := exec.LookPath("busybox")
	testenv.Require(t, berr == nil && isStatic(busybox), "a static busybox is needed for the test image: apt-get install busybox-static")
	return busybox
}

func isStatic(path string) bool {
	out, err := exec.Command("file", "-L", path).Output()
	if err != nil {
		// Without file(1), trust the Debian package name.
		return true
	}
	return strings.Contains(string(out), "statically linked")
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
