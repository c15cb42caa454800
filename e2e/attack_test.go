package e2e

// The agent attacks its own sandbox: e2e/internal/attacker, uploaded into a sandbox
// and run through `sandbox exec` (so as the agent, confined like any agent program),
// tries io_uring, vsock (directly and through io_uring), the runner's bootstrap and
// gateway ports, ptrace and the memory of the supervisor, the supervisor's waiting
// spare confinement helper, the sandbox token file and a write outside the policy's
// read_write (Landlock, under hard_requirement). Both
// drivers: `go test -run Attack ./e2e/`, `E2E_DRIVER=vm go test -run Attack ./e2e/`.

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// attackPolicy leaves /tmp (mode 1777 in the test image, so writable for any uid)
// out of read_write: only Landlock refuses the write there.
const attackPolicy = `version: 1
filesystem_policy:
  include_workdir: true
  read_only: [/usr, /lib, /lib64, /bin, /sbin, /etc, /proc, /dev/urandom, /dev/zero, /dev/random]
  read_write: [/dev/null, /dev/tty, /dev/pts, /dev/ptmx]
landlock:
  compatibility: hard_requirement
`

// Where each driver leaves the sandbox token: the docker driver's bootstrap mount
// (drivers/docker BootstrapDir + "/token") and the supervisor's materialised copy
// (supervisor RunDir + "/secrets/sandbox-token", the VM's only copy).
var tokenPaths = []string{"/etc/openshell/bootstrap/token", "/run/openshell/secrets/sandbox-token"}

// buildAttacker compiles the attacker for the host's architecture, static.
func buildAttacker(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "attacker")
	cmd := exec.Command("go", "build", "-o", out, "./e2e/internal/attacker")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build attacker: %v\n%s", err, b)
	}
	return out
}

func TestAttackFromAgent(t *testing.T) {
	h := newHarness(t)
	attacker := buildAttacker(t)
	polFile := writePolicy(t, t.TempDir(), attackPolicy)
	box := uniqueName("attack")
	// Under hard_requirement the sandbox only becomes Ready when the supervisor found
	// Landlock enforced by the (guest) kernel.
	h.mustRun(t, "sandbox", "create", "--name", box, "--from", testImage(), "--timeout", "180s",
		"--policy", polFile, "--", "sh", "-c", "while true; do sleep 1; done")
	h.mustRun(t, "sandbox", "upload", box, attacker, "/sandbox/attacker")

	// The denied write target must be writable but for Landlock.
	if mode := strings.TrimSpace(h.mustRun(t, "sandbox", "exec", "-n", box, "--", "stat", "-c", "%A", "/tmp").stdout); mode != "drwxrwxrwt" {
		t.Fatalf("/tmp in the test image is %q, want drwxrwxrwt (the Landlock probe needs a directory only Landlock refuses)", mode)
	}
	args := []string{"sandbox", "exec", "-n", box, "--", "/sandbox/attacker",
		"-write-denied", "/tmp/escaped", "-write-allowed", "/sandbox/allowed"}
	for _, p := range tokenPaths {
		args = append(args, "-token", p)
	}
	got := runAttacker(t, h, args...)

	want := map[string][]string{
		"uid":        {"1000"},
		"Seccomp":    {"2"},
		"NoNewPrivs": {"1"},
		"CapEff":     {"0000000000000000"},
		// io_uring: refused at setup, so its socket operation has no ring to run on.
		"io_uring_setup":        {"EPERM"},
		"io_uring_socket_vsock": {"not attempted: io_uring_setup EPERM"},
		"io_uring_enter":        {"EPERM"},
		"io_uring_register":     {"EPERM"},
		"socket_vsock":          {"EPERM"},
		"socket_vsock_highbits": {"EPERM"},
		// The runner's ports (VM) are out of reach: no vsock socket can be made. On
		// the docker driver there is no vsock at all, and the refusal is the same.
		"vsock_connect_bootstrap": {"EPERM"},
		"vsock_connect_gateway":   {"EPERM"},
		"supervisor_pid":          {"1"},
		// ptrace and process_vm_readv are refused by the filter; the /proc files by
		// the kernel's ptrace access check (another uid, no capabilities).
		"ptrace_attach_supervisor":    {"EPERM"},
		"ptrace_seize_supervisor":     {"EPERM"},
		"process_vm_readv_supervisor": {"EPERM"},
		"read_supervisor_environ":     {"EACCES"},
		"open_supervisor_mem":         {"EACCES"},
		// The token: the docker driver's file (which the supervisor must make
		// unreachable, or which the host uid protects) and the supervisor's copy.
		"read_token_0": {"EACCES", "ENOENT"},
		"read_token_1": {"EACCES", "ENOENT"},
		// Landlock is enforced (in the guest kernel too).
		"write_denied":  {"EACCES"},
		"write_allowed": {"ok"},
		// The supervisor's spare confinement helper is there (root, waiting for a
		// command) and out of the agent's reach; the agent holds no socket.
		"spare_found":       {"true"},
		"spare_uid":         {"0"},
		"spare_kill":        {"EPERM"},
		"spare_sigstop":     {"EPERM"},
		"spare_ptrace":      {"EPERM"},
		"spare_list_fds":    {"EACCES"},
		"spare_open_socket": {"EACCES"},
		"spare_pidfd_getfd": {"EPERM"},
		"own_sockets":       {"0"},
		// The channel's serial port, where the VM has one (virtio-serial transport;
		// TestVMSuspendResume checks it on such a VM after a resume).
		"open_serial_port": {"EACCES", "not attempted: no port"},
	}
	for k, ok := range want {
		v, present := got[k]
		if !present || !slices.Contains(ok, v) {
			t.Errorf("%s = %q, want one of %q", k, v, ok)
		}
	}
	if c := got["supervisor_comm"]; !strings.Contains(c, "openshell-sandbox") && c != "init" && c != "exe" {
		t.Errorf("the attacker did not find the supervisor by name (got %q): its ptrace attempts prove nothing", c)
	}
	if abi, err := strconv.Atoi(got["landlock_abi"]); err != nil || abi < 1 {
		t.Errorf("landlock_abi = %q: the kernel running the agent does not offer Landlock", got["landlock_abi"])
	}
	if r := h.run(t.Context(), "sandbox", "exec", "-n", box, "--", "cat", "/tmp/escaped"); r.code == 0 {
		t.Errorf("/tmp/escaped exists after a refused write: %q", r.stdout)
	}
	// The supervisor says what it enforced.
	waitLogs(t, h, box, "Landlock enforced")

	if driver() == "docker" {
		t.Run("token file owned by the agent's uid", func(t *testing.T) {
			// The gateway here runs as root, so the token file is root's 0600 and the
			// read above is refused by its mode alone. A gateway running as the
			// agent's uid writes it as that uid: play that by handing the host file
			// to uid 1000, then read it as the agent again: the supervisor covered
			// the file once it had read it, so its mode no longer matters.
			src := bootstrapMount(t, box)
			tok := filepath.Join(src, "token")
			if err := os.Chown(tok, 1000, 1000); err != nil {
				t.Fatal(err)
			}
			got := runAttacker(t, h, "sandbox", "exec", "-n", box, "--", "/sandbox/attacker", "-token", tokenPaths[0])
			if v := got["read_token_0"]; v != "EACCES" && v != "ENOENT" {
				t.Errorf("the agent reads the sandbox token when the file is its uid's: read_token_0 = %q, want EACCES or ENOENT", v)
			}
		})
	}
}

// runAttacker runs the CLI command that execs the attacker and decodes its report
// (the last line of its output).
func runAttacker(t *testing.T, h *harness, args ...string) map[string]string {
	t.Helper()
	r := h.mustRun(t, args...)
	line := strings.TrimSpace(r.stdout)
	if i := strings.LastIndex(line, "\n"); i >= 0 {
		line = line[i+1:]
	}
	var got map[string]string
	if err := json.Unmarshal([]byte(line), &got); err != nil {
		t.Fatalf("attacker output: %v\nstdout: %s\nstderr: %s", err, r.stdout, r.stderr)
	}
	t.Logf("attacker (%s driver): %s", driver(), line)
	return got
}

// bootstrapMount is the host directory the docker driver mounts at the sandbox's
// bootstrap dir.
func bootstrapMount(t *testing.T, box string) string {
	t.Helper()
	out, err := exec.Command("docker", "inspect", "-f",
		`{{range .Mounts}}{{if eq .Destination "/etc/openshell/bootstrap"}}{{.Source}}{{end}}{{end}}`, containerID(t, box)).Output()
	if err != nil || strings.TrimSpace(string(out)) == "" {
		t.Fatalf("bootstrap mount of %s: %v %q", box, err, out)
	}
	return strings.TrimSpace(string(out))
}
