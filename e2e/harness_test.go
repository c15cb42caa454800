// Package e2e drives the real binaries (openshell, openshell-gateway,
// openshell-sandbox, and openshell-driver-vm for the VM driver), built into a temp
// dir, against a real compute driver. Missing prerequisites skip locally and fail
// under CI=true.
//
//	go test ./e2e/                                   docker driver (scripts/setup-docker.sh)
//	E2E_DRIVER=vm go test ./e2e/                     VM driver (scripts/setup-vm-host.sh); the
//	                                                 image comes from dockerd (E2E_IMAGE overrides)
//	E2E_DRIVER=podman go test ./e2e/                 Podman driver (scripts/setup-podman.sh): the
//	                                                 rootful service, or CONTAINER_HOST=unix://…
//	                                                 for the rootless one
//	E2E_DRIVER=kubernetes go test ./e2e/             Kubernetes driver on the test cluster's node
//	                                                 (scripts/setup-kubernetes.sh; images imported)
//	OPENSHELL_BENCH=1 go test -run Bench -v ./e2e/   exec and upload against docker exec/cp
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/openshell/openshell/gateway/clientconf"
	"github.com/openshell/openshell/internal/kubetest"
	"github.com/openshell/openshell/internal/rundir"
	"github.com/openshell/openshell/internal/testenv"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
	tmpRoot   string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if tmpRoot != "" {
		os.RemoveAll(tmpRoot)
	}
	if driver() == "podman" && code == 0 && len(podmanLeaks()) > 0 {
		fmt.Fprintf(os.Stderr, "e2e on podman leaked: %s\n", strings.Join(podmanLeaks(), "; "))
		code = 1
	}
	os.Exit(code)
}

// podmanLeaks lists what the suite left in the Podman service: containers, pods,
// networks and volumes labelled openshell.ai/managed-by.
func podmanLeaks() []string {
	var leaks []string
	for _, what := range [][]string{{"ps", "-a"}, {"pod", "ps"}, {"network", "ls"}, {"volume", "ls"}} {
		out, err := engineCmd(append(what, "-q", "--filter", "label=openshell.ai/managed-by")...).CombinedOutput()
		if s := strings.TrimSpace(string(out)); err == nil && s != "" {
			leaks = append(leaks, what[0]+": "+strings.ReplaceAll(s, "\n", " "))
		}
	}
	return leaks
}

// driver is the compute driver under test.
func driver() string {
	if d := os.Getenv("E2E_DRIVER"); d != "" {
		return d
	}
	return "docker"
}

// testImage is the sandbox image for the driver.
func testImage() string {
	if img := os.Getenv("E2E_IMAGE"); img != "" {
		return img
	}
	if driver() == "vm" {
		return "docker-daemon:" + dockerTestImage // the VM driver imports it from dockerd
	}
	return dockerTestImage
}

// dockerTestImage is built by scripts/testimage/build.sh (no registry needed).
const dockerTestImage = "openshell-test/bash:latest"

// ensureDockerImage builds the test image in dockerd when it is missing.
func ensureDockerImage(t *testing.T) {
	t.Helper()
	testenv.RequireCommand(t, "docker", "run scripts/setup-docker.sh")
	out, err := exec.Command("docker", "version", "--format", "{{.Server.Version}}").CombinedOutput()
	testenv.Require(t, err == nil, "dockerd does not answer ("+strings.TrimSpace(string(out))+"): run scripts/setup-docker.sh")
	if exec.Command("docker", "image", "inspect", dockerTestImage).Run() != nil {
		// The script is idempotent and needs no registry (Debian's busybox and bash).
		out, err := exec.Command("../scripts/testimage/build.sh", "bash").CombinedOutput()
		testenv.Require(t, err == nil, "build the test image with scripts/testimage/build.sh bash: "+string(out))
	}
	err = exec.Command("docker", "image", "inspect", dockerTestImage).Run()
	testenv.Require(t, err == nil, "image "+dockerTestImage+" missing: run scripts/testimage/build.sh bash")
}

// requireDriver checks the driver's prerequisites.
func requireDriver(t *testing.T) {
	t.Helper()
	switch driver() {
	case "docker":
		if os.Getenv("E2E_IMAGE") == "" {
			ensureDockerImage(t)
		} else {
			testenv.RequireCommand(t, "docker", "run scripts/setup-docker.sh")
		}
	case "vm":
		testenv.RequireCommand(t, "qemu-system-x86_64", "run scripts/setup-vm-host.sh")
		if os.Getenv("E2E_IMAGE") == "" {
			ensureDockerImage(t)
		}
	case "podman":
		// This host runs cgroups v1: the documented switch that lets the podman driver
		// run on it (rootless sandboxes there get no resource limits). Every gateway
		// the tests start inherits it.
		os.Setenv("OPENSHELL_PODMAN_ALLOW_CGROUPS_V1", "1")
		sock := podmanSocket()
		out, err := engineCmd("version", "--format", "{{.Server.Version}}").CombinedOutput()
		testenv.Require(t, err == nil, "no Podman service answers on "+sock+" ("+strings.TrimSpace(string(out))+"): run scripts/setup-podman.sh")
		if os.Getenv("E2E_IMAGE") == "" && engineCmd("image", "inspect", dockerTestImage).Run() != nil {
			cmd := exec.Command("../scripts/testimage/build.sh", "bash")
			cmd.Env = append(os.Environ(), "ENGINE=podman", "PODMAN_SOCKETS="+sock)
			out, err := cmd.CombinedOutput()
			testenv.Require(t, err == nil, "build the test image with ENGINE=podman scripts/testimage/build.sh bash: "+string(out))
		}
	case "kubernetes":
		requireKube(t)
	default:
		t.Fatalf("E2E_DRIVER=%q: use docker, podman, kubernetes or vm", driver())
	}
}

// podmanSocket is the Podman service the podman driver uses: CONTAINER_HOST, else the
// rootful service.
func podmanSocket() string {
	if h := os.Getenv("CONTAINER_HOST"); strings.HasPrefix(h, "unix://") {
		return strings.TrimPrefix(h, "unix://")
	}
	return "/run/podman/podman.sock"
}

// engineCmd runs the container engine's CLI for the driver under test (docker, or the
// podman that scripts/setup-podman.sh built, against the driver's service).
func engineCmd(args ...string) *exec.Cmd {
	if driver() != "podman" {
		return exec.Command("docker", args...)
	}
	bin := os.Getenv("OPENSHELL_PODMAN_BIN")
	if bin == "" {
		out, _ := exec.Command("../scripts/setup-podman.sh", "env").Output()
		for _, l := range strings.Split(string(out), "\n") {
			if v, ok := strings.CutPrefix(l, "OPENSHELL_PODMAN_BIN="); ok {
				bin = v
			}
		}
	}
	if bin == "" {
		bin = "podman"
	}
	return exec.Command(bin, append([]string{"--remote", "--url", "unix://" + podmanSocket()}, args...)...)
}

// build compiles the three binaries once per test binary (the supervisor static).
func build(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		// Short paths: the VM driver's Unix sockets live under the state dir (≤108 bytes).
		tmpRoot, buildErr = os.MkdirTemp("", "osh-")
		if buildErr != nil {
			return
		}
		os.Chmod(tmpRoot, 0o755)
		binDir = filepath.Join(tmpRoot, "bin")
		type target struct {
			pkg    string
			static bool
		}
		// Static ones without cgo, as the Makefile builds them on Linux.
		targets := []target{{"./cmd/openshell", true}, {"./cmd/openshell-gateway", false}, {"./cmd/openshell-sandbox", true}}
		if driver() == "vm" {
			// The gateway runs the VM driver found next to itself.
			targets = append(targets, target{"./cmd/openshell-driver-vm", false})
		}
		for _, b := range targets {
			args := []string{"build", "-o", filepath.Join(binDir, filepath.Base(b.pkg))}
			// E2E_GO_OVERLAY builds with a go -overlay file (wiring not yet in the tree).
			if ov := os.Getenv("E2E_GO_OVERLAY"); ov != "" {
				args = append(args, "-overlay", ov)
			}
			cmd := exec.Command("go", append(args, b.pkg)...)
			cmd.Dir = ".."
			cmd.Env = os.Environ()
			if b.static {
				cmd.Env = append(cmd.Env, "CGO_ENABLED=0")
			}
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", b.pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// harness is one gateway (started through the CLI) with its own HOME.
type harness struct {
	t    *testing.T
	bin  string
	home string
	env  []string
	port int
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// newHarness starts a gateway with the driver under test.
func newHarness(t *testing.T) *harness {
	t.Helper()
	if testing.Short() {
		t.Skip("e2e builds the binaries and drives a real compute driver; not in -short")
	}
	requireDriver(t)
	bin := build(t)
	home, err := os.MkdirTemp(tmpRoot, "h")
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, bin: bin, home: home, port: freePort(t)}
	h.env = append(os.Environ(),
		"HOME="+home,
		"XDG_CONFIG_HOME="+filepath.Join(home, "config"),
		"XDG_STATE_HOME="+filepath.Join(home, "s"),
		"OPENSHELL_GATEWAY_BIN="+filepath.Join(bin, "openshell-gateway"),
		"PATH="+bin+":"+os.Getenv("PATH"),
	)
	h.startGateway()
	t.Cleanup(func() {
		if t.Failed() {
			h.logDiagnostics()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		h.run(ctx, "sandbox", "delete", "--all")
		h.run(ctx, "gateway", "stop")
		// A gateway killed by a test (kill -9) cannot remove its sockets' runtime
		// dirs under /run; they are keyed by state dir, so remove this home's.
		dirs, _ := filepath.Glob(filepath.Join(home, "s", "openshell", "*"))
		for _, d := range dirs {
			for _, sub := range []string{d, filepath.Join(d, "vm-driver"), filepath.Join(d, "vm-driver", "sb")} {
				os.RemoveAll(rundir.For(sub))
			}
		}
	})
	return h
}

// logDiagnostics logs the tails of the gateway's log and, for VM sandboxes, of each
// sandbox's runner log and guest console: a test that failed on a CI machine leaves
// nothing else to read once its temporary home is removed.
func (h *harness) logDiagnostics() {
	h.t.Helper()
	files, _ := filepath.Glob(filepath.Join(h.home, "s", "openshell", "*", "gateway.log"))
	for _, sb := range []string{"runner.log", "console.log"} {
		more, _ := filepath.Glob(filepath.Join(h.home, "s", "openshell", "*", "vm-driver", "sb", "*", sb))
		files = append(files, more...)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		h.t.Logf("diagnostics: last lines of %s:\n%s", strings.TrimPrefix(f, h.home+"/"), tail(string(b), 80))
	}
}

func (h *harness) startGateway() {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	r := h.run(ctx, append([]string{"gateway", "start", "--drivers", driver(), "--port", strconv.Itoa(h.port)}, h.driverArgs()...)...)
	if r.err != nil {
		h.t.Fatalf("gateway start: %v\n%s%s", r.err, r.stdout, r.stderr)
	}
}

// gatewayPID is the pid of the background gateway from its pid file.
func (h *harness) gatewayPID() int {
	h.t.Helper()
	matches, _ := filepath.Glob(filepath.Join(h.home, "s", "openshell", "*", "gateway.pid"))
	if len(matches) == 0 {
		h.t.Fatalf("no gateway.pid under %s", h.home)
	}
	data, err := os.ReadFile(matches[0])
	if err != nil {
		h.t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		h.t.Fatalf("pid file %s: %v", matches[0], err)
	}
	return pid
}

type result struct {
	stdout, stderr string
	code           int
	err            error
	took           time.Duration
}

func (h *harness) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(h.bin, "openshell"), args...)
	cmd.Env = h.env
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// run runs the CLI to completion.
func (h *harness) run(ctx context.Context, args ...string) result {
	cmd := h.command(ctx, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String(), err: err, took: time.Since(start)}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	}
	return r
}

// mustRun runs the CLI and fails the test on a non-zero exit.
func (h *harness) mustRun(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	r := h.run(ctx, args...)
	if r.err != nil {
		t.Fatalf("openshell %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.err, r.stdout, r.stderr)
	}
	return r
}

// uniqueName makes sandbox names unique per run: other packages' tests may create
// sandboxes (and containers named after them) on the same engine at the same time.
func uniqueName(prefix string) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s-e2e-%x", prefix, b)
}

// create makes a sandbox and waits until it is READY.
func (h *harness) create(name string, argv ...string) {
	h.t.Helper()
	args := []string{"sandbox", "create", "--name", name, "--from", testImage(), "--timeout", "120s"}
	if len(argv) > 0 {
		args = append(append(args, "--"), argv...)
	}
	h.mustRun(h.t, args...)
}

// dial connects to the gateway with the CLI's client configuration.
func (h *harness) dial(t *testing.T) *grpc.ClientConn {
	t.Helper()
	for _, kv := range []string{"HOME=" + h.home, "XDG_CONFIG_HOME=" + filepath.Join(h.home, "config"), "XDG_STATE_HOME=" + filepath.Join(h.home, "s")} {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	cc, err := clientconf.Dialer(func() string { return clientconf.DefaultName })(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// containerID finds the container of sandbox name (docker or podman driver).
func containerID(t *testing.T, name string) string {
	t.Helper()
	out, err := engineCmd("ps", "-q", "--filter", "label=openshell.ai/sandbox-name="+name).Output()
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(string(out))
	if id == "" || strings.Contains(id, "\n") {
		t.Fatalf("container of sandbox %s: %q", name, id)
	}
	return id
}

func killPID(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }

// killGatewayAndWaitReady SIGKILLs the gateway, starts it again on the same state and
// waits until sandbox name is READY through it, failing the test after within; it
// returns how long READY took after the restart.
func (h *harness) killGatewayAndWaitReady(t *testing.T, name string, within time.Duration) time.Duration {
	t.Helper()
	if err := killPID(h.gatewayPID()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	h.startGateway()
	start := time.Now()
	for {
		r := h.run(t.Context(), "sandbox", "get", name)
		if r.err == nil && strings.Contains(r.stdout, "READY") {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("not READY within %v of the restart: %s %s", within, r.stdout, r.stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// rootExec runs a shell script as root in sandbox name's container, outside the
// supervisor (the test's own hand, e.g. to trust a test CA): through the container
// engine, or kubectl on the kubernetes driver. It returns the script's standard
// output; a failure's error carries its standard error.
func rootExec(t *testing.T, name, stdin, script string) ([]byte, error) {
	t.Helper()
	var cmd *exec.Cmd
	if driver() == "kubernetes" {
		kc := "--kubeconfig=" + kubetest.KubeconfigPath()
		out, err := exec.Command("kubectl", kc, "get", "pods", "-n", kubeNamespace, "-o", "name",
			"-l", "openshell.ai/sandbox-name="+name).Output()
		pod := strings.TrimSpace(string(out))
		if err != nil || pod == "" || strings.Contains(pod, "\n") {
			t.Fatalf("pod of sandbox %s: %q %v", name, pod, err)
		}
		cmd = exec.Command("kubectl", kc, "exec", "-i", "-n", kubeNamespace, pod, "-c", "sandbox", "--", "sh", "-c", script)
	} else {
		cmd = engineCmd("exec", "-i", "-u", "0", containerID(t, name), "sh", "-c", script)
	}
	cmd.Stdin = strings.NewReader(stdin)
	// The script's output only: kubectl logs client-side notices of its own on stderr
	// ("Unknown stream id 1, discarding message"), which are no output of the script.
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		err = fmt.Errorf("%w (stderr: %s)", err, strings.TrimSpace(stderr.String()))
	}
	return out, err
}

// trustTestCA appends the test CA to the sandbox's system roots, which its proxy
// checks terminated upstreams against; do it before the first TLS request.
func trustTestCA(t *testing.T, name string, caPEM []byte) {
	t.Helper()
	if out, err := rootExec(t, name, string(caPEM), "cat >> /etc/ssl/certs/ca-certificates.crt"); err != nil {
		t.Fatalf("trust the test CA in the sandbox: %v\n%s", err, out)
	}
}
