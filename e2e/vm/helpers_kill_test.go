package vm_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/openshell/openshell/internal/procstat"
	"github.com/openshell/openshell/internal/rundir"
	"github.com/openshell/openshell/internal/testenv/vmhost"
)

// vmRun is a started gateway (VM driver) with the test image built: what the kill -9
// tests share with TestVMEndToEnd.
type vmRun struct {
	*env
	image string
	port  int
	cfg   string
}

// startVMRun checks the prerequisites, builds the binaries and the image, and starts a
// gateway with the VM driver; cleanup stops it and kills what is left, by PID.
func startVMRun(t *testing.T) *vmRun { return startVMRunWith(t, nil) }

// startVMRunWith is startVMRun with more gateway configuration: extra, given the test
// image's reference, returns TOML appended after the [drivers.vm] section.
func startVMRunWith(t *testing.T, extra func(image string) string) *vmRun {
	t.Helper()
	if testing.Short() {
		t.Skip("builds every binary and boots VMs")
	}
	vmhost.Require(t)
	busybox := requireStaticBusybox(t)

	r := &vmRun{env: newEnv(t)}
	r.image = r.buildImage(busybox)
	r.port = freePort(t)
	r.cfg = filepath.Join(r.tmp, "gateway.toml")
	body := "[drivers.vm]\ncpus = 1\nmemory_mib = 512\n"
	if extra != nil {
		body += extra(r.image)
	}
	if err := os.WriteFile(r.cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	r.startGateway()
	t.Cleanup(func() {
		r.cliMayFail("gateway", "stop")
		r.killLeftovers() // VMs outlive the gateway by design (a pool's idle ones too)
		for _, sub := range []string{r.gwState, filepath.Join(r.gwState, "vm-driver"), filepath.Join(r.gwState, "vm-driver", "sb")} {
			os.RemoveAll(rundir.For(sub))
		}
	})
	return r
}

// startGateway starts (or restarts) the gateway with the same state dir, port and config.
func (r *vmRun) startGateway() {
	r.t.Helper()
	r.cli("gateway", "start", "--drivers", "vm", "--port", strconv.Itoa(r.port), "--state-dir", r.gwState, "--config", r.cfg)
}

// sbView is the part of `sandbox get -o json` the tests read.
type sbView struct {
	Metadata struct {
		ID   string `json:"id"`
		Name string `json:"name"`
	} `json:"metadata"`
	Status struct {
		Phase      string `json:"phase"`
		Conditions []struct {
			Type    string `json:"type"`
			Status  string `json:"status"`
			Reason  string `json:"reason"`
			Message string `json:"message"`
		} `json:"conditions"`
	} `json:"status"`
}

func (e *env) getSandbox(name string) (sbView, string, error) {
	var v sbView
	out, err := e.run("sandbox", "get", name, "-o", "json")
	if err != nil {
		return v, out, err
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return v, out, fmt.Errorf("sandbox get %s: %w: %s", name, err, out)
	}
	return v, out, nil
}

// waitPhaseOf polls until name's phase contains want and returns that view; it fails
// the test after timeout.
func (e *env) waitPhaseOf(name, want string, timeout time.Duration) sbView {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	var lastOut string
	for {
		v, out, err := e.getSandbox(name)
		if err == nil {
			lastOut = out
			if strings.Contains(strings.ToUpper(v.Status.Phase), want) {
				return v
			}
		}
		if time.Now().After(deadline) {
			e.dumpLogs()
			e.t.Fatalf("sandbox %s not %s within %v (last: %s)", name, want, timeout, lastOut)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// execIn runs a command in a sandbox through the CLI and returns its trimmed output.
func (e *env) execIn(name string, argv ...string) string {
	e.t.Helper()
	return strings.TrimSpace(e.cli(append([]string{"sandbox", "exec", "-n", name, "--"}, argv...)...))
}

// vmRecord is the part of a VM sandbox's state.json the tests read.
type vmRecord struct {
	SandboxName string `json:"sandbox_name"`
	RunnerPID   int    `json:"runner_pid"`
	VMMPID      int    `json:"vmm_pid"`
	Paths       struct {
		ControlSocket string `json:"control_socket"`
		Disk          string `json:"disk"`
		VMMDir        string `json:"vmm_dir"`
	} `json:"paths"`
}

// vmRecords reads the driver's record of each VM (pool members too), by state
// directory.
func (e *env) vmRecords() map[string]vmRecord {
	recs := map[string]vmRecord{}
	files, _ := filepath.Glob(filepath.Join(e.gwState, "vm-driver", "sb", "*", "state.json"))
	for _, f := range files {
		var rec vmRecord
		if b, err := os.ReadFile(f); err == nil && json.Unmarshal(b, &rec) == nil {
			recs[filepath.Dir(f)] = rec
		}
	}
	return recs
}

// sandboxDir finds the driver's state directory of the sandbox called name.
func (e *env) sandboxDir(name string) (string, vmRecord, bool) {
	for dir, rec := range e.vmRecords() {
		if rec.SandboxName == name {
			return dir, rec, true
		}
	}
	return "", vmRecord{}, false
}

// procsUnder lists live processes whose command line mentions dir.
func procsUnder(dir string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == os.Getpid() || !alive(pid) {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		if cl := strings.ReplaceAll(string(b), "\x00", " "); strings.Contains(cl, dir) {
			out = append(out, fmt.Sprintf("%d %s", pid, cl))
		}
	}
	return out
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	st, err := procstat.Read(pid)
	return err == nil && st.State != 'Z' && st.State != 'X'
}

// ppid returns pid's parent pid (0 if unknown).
func ppid(pid int) int {
	st, err := procstat.Read(pid)
	if err != nil {
		return 0
	}
	return st.PPID
}

// childrenOf lists the live children of parent whose command line contains want.
func childrenOf(parent int, want string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || ppid(pid) != parent || !alive(pid) {
			continue
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(b), want) {
			out = append(out, pid)
		}
	}
	return out
}

// gatewayPID reads the pid file `openshell gateway start` wrote in the state dir.
func (e *env) gatewayPID() int {
	e.t.Helper()
	b, err := os.ReadFile(filepath.Join(e.gwState, "gateway.pid"))
	if err != nil {
		e.t.Fatalf("gateway pid file: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || !alive(pid) {
		e.t.Fatalf("gateway pid file %q: no live process", b)
	}
	return pid
}

// kill9GatewayAndDriver SIGKILLs the gateway and its VM driver (the gateway's child,
// whose command line names the gateway's pid), waits until both are gone and returns
// the driver's pid.
func (e *env) kill9GatewayAndDriver() (driverPID int) {
	e.t.Helper()
	gw := e.gatewayPID()
	drv := childrenOf(gw, "openshell-driver-vm")
	if len(drv) != 1 {
		e.t.Fatalf("expected one openshell-driver-vm child of the gateway (pid %d), found %v", gw, drv)
	}
	kill9(e.t, "gateway", gw)
	kill9(e.t, "VM driver", drv[0])
	return drv[0]
}

// kill9 SIGKILLs pid and waits until it is gone (or a zombie nobody reaps).
func kill9(t *testing.T, what string, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 %s (pid %d): %v", what, pid, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("%s (pid %d) still alive 10 s after SIGKILL", what, pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("killed %s (pid %d) with SIGKILL", what, pid)
}

// deleteAndWaitGone deletes a sandbox and waits until the gateway no longer knows it.
func (e *env) deleteAndWaitGone(name string, timeout time.Duration) {
	e.t.Helper()
	e.cli("sandbox", "delete", name)
	deadline := time.Now().Add(timeout)
	for {
		out, err := e.run("sandbox", "get", name)
		if err != nil && strings.Contains(strings.ToLower(out), "not found") {
			return
		}
		if time.Now().After(deadline) {
			e.dumpLogs()
			e.t.Fatalf("sandbox %s still there %v after delete: %s", name, timeout, out)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// waitNoProcs waits until nothing runs from dir (the runner and its children exit
// asynchronously after the gateway reports the delete).
func waitNoProcs(t *testing.T, dir string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		p := procsUnder(dir)
		if len(p) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("processes left behind under %s: %v", dir, p)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitGone waits until path no longer exists.
func waitGone(t *testing.T, path string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Lstat(path); os.IsNotExist(err) {
			return
		}
		if time.Now().After(deadline) {
			ents, _ := os.ReadDir(path)
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			t.Errorf("%s left behind %v after delete (contents %v)", path, timeout, names)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}
