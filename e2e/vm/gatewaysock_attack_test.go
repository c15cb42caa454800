package vm_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestVMGatewaySocketAttack attacks the gateway from inside a VM guest, now that the
// guest speaks plaintext gRPC: the runner bridges its gateway port to the sandbox's
// own gateway socket. The guest's init here is the driver's test guest in its
// "probe-gateway" mode (gateway.toml supervisor_binary), stronger than any agent: it
// runs as root in the guest and holds the instance secret, so it gets past the
// runner's admission. Through the real runner and the real gateway it presents a
// forged token, another sandbox's token, asks about the other sandbox and calls admin
// RPCs; every one must be refused, while its own token for its own sandbox works (the
// control). A stream without the instance preamble must not reach the gateway at all.
// (An agent cannot even open a vsock socket: e2e TestAttackFromAgent with E2E_DRIVER=vm.)
func TestVMGatewaySocketAttack(t *testing.T) {
	if testing.Short() {
		t.Skip("builds every binary and boots VMs")
	}
	r := &vmRun{env: newEnv(t)}
	r.image = r.buildImage(requireStaticBusybox(t))
	guestInit := filepath.Join(r.bin, "testguest")
	build := exec.Command("go", "build", "-o", guestInit, repo+"/drivers/vm/internal/testguest")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build testguest: %v\n%s", err, out)
	}
	r.port = freePort(t)
	r.cfg = filepath.Join(r.tmp, "gateway.toml")
	conf := "[drivers.vm]\ncpus = 1\nmemory_mib = 512\nsupervisor_binary = " + strconv.Quote(guestInit) + "\n"
	if err := os.WriteFile(r.cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	r.startGateway()
	t.Cleanup(func() {
		r.cliMayFail("sandbox", "delete", "gs-victim")
		r.cliMayFail("sandbox", "delete", "gs-attacker")
		r.cliMayFail("gateway", "stop")
		r.killLeftovers()
	})

	// The victim: another sandbox, whose id and token the attacker is handed.
	r.cli("sandbox", "create", "--name", "gs-victim", "--from", r.image, "--no-wait", "--", "idle")
	victim := waitRunnerSpec(t, r.env, "gs-victim")
	if victim.GatewaySocketDir == "" {
		t.Fatalf("the victim's runner spec has no gateway_socket_dir: the gateway gave the VM no socket")
	}
	if !strings.HasPrefix(victim.Bootstrap.Endpoint, "http://") || victim.Bootstrap.CAPEM != "" {
		t.Fatalf("the guest's endpoint is %q (CA given: %v); want plaintext http:// and no CA with a sandbox socket",
			victim.Bootstrap.Endpoint, victim.Bootstrap.CAPEM != "")
	}
	if _, err := os.Stat(filepath.Join(victim.GatewaySocketDir, "gateway.sock")); err != nil {
		t.Fatalf("the victim's gateway socket: %v", err)
	}

	r.cli("sandbox", "create", "--name", "gs-attacker", "--from", r.image, "--no-wait", "--",
		"probe-gateway", victim.SandboxID, victim.Bootstrap.Token)
	attacker := waitRunnerSpec(t, r.env, "gs-attacker")
	if attacker.GatewaySocketDir == "" || attacker.GatewaySocketDir == victim.GatewaySocketDir {
		t.Fatalf("socket dirs: attacker %q, victim %q; want two different ones", attacker.GatewaySocketDir, victim.GatewaySocketDir)
	}
	dir, rec, _ := r.sandboxDir("gs-attacker")
	got := waitProbes(t, filepath.Join(dir, "console.log"), 8*time.Minute)
	want := map[string]string{
		"own_token_own_config":   "ok",
		"forged_token":           "Unauthenticated",
		"other_token":            "PermissionDenied",
		"own_token_other_config": "PermissionDenied",
		"admin_list_sandboxes":   "PermissionDenied",
		"admin_delete_other":     "PermissionDenied",
		"no_preamble_own_token":  "Unavailable",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("probes %v; want exactly %v", got, want)
	}
	// The stream without the preamble was refused by the runner, not the gateway.
	if st := runnerStatus(t, rec.Paths.ControlSocket); st.BadPreamble < 1 {
		t.Errorf("runner status %+v: bad_preamble = 0, want the attacker's stream without the preamble counted", st)
	}
	// The victim is untouched: still there.
	if out, err := r.cliMayFail("sandbox", "get", "gs-victim"); err != nil {
		t.Errorf("the victim sandbox after the attack: %v %s", err, out)
	}
}

// runnerSpec is the part of a VM sandbox's runner.json this test reads.
type runnerSpec struct {
	SandboxID        string `json:"sandbox_id"`
	GatewaySocketDir string `json:"gateway_socket_dir"`
	Bootstrap        struct {
		Endpoint string `json:"endpoint"`
		Token    string `json:"token"`
		CAPEM    string `json:"ca_pem"`
	} `json:"bootstrap"`
}

func waitRunnerSpec(t *testing.T, e *env, name string) runnerSpec {
	t.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		if dir, _, ok := e.sandboxDir(name); ok {
			var s runnerSpec
			if b, err := os.ReadFile(filepath.Join(dir, "runner.json")); err == nil && json.Unmarshal(b, &s) == nil && s.Bootstrap.Token != "" {
				return s
			}
		}
		if time.Now().After(deadline) {
			e.dumpLogs()
			t.Fatalf("no runner spec for sandbox %s", name)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

var probesLine = regexp.MustCompile(`openshell-testguest: gateway-probes (\{.*\})`)

// waitProbes reads the guest's console log until the probes' JSON line is there.
func waitProbes(t *testing.T, path string, timeout time.Duration) map[string]string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(path)
		if m := probesLine.FindSubmatch(b); m != nil {
			var out map[string]string
			if err := json.Unmarshal(m[1], &out); err != nil {
				t.Fatalf("probes line %q: %v", m[1], err)
			}
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("no gateway-probes line in %s within %v; console:\n%s", path, timeout, b)
		}
		time.Sleep(time.Second)
	}
}

// runnerStatus reads GET /status from a runner's control socket.
func runnerStatus(t *testing.T, sock string) (st struct {
	BadPreamble int `json:"bad_preamble"`
	Gateway     int `json:"gateway_conns"`
}) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}, Timeout: 10 * time.Second}
	resp, err := hc.Get("http://runner/status")
	if err != nil {
		t.Fatalf("runner status: %v", err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}
