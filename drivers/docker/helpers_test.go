package docker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/openshell/openshell/internal/testenv"
)

// Integration tests run against the real dockerd started by scripts/setup-docker.sh.
// Everything a test creates carries openshell.ai/test-run=<run>-<n> (through
// Config.Labels) and lives on its own network, so tests can check that they leak
// nothing and clean up only what they made.

const (
	testImage    = "openshell-test/busybox:latest"
	labelTestRun = "openshell.ai/test-run"
)

var (
	testRunID  = randHex(4)
	testSeq    atomic.Int64
	setupOnce  sync.Once
	setupErr   string
	supervisor string // host path of the supervisor binary bind-mounted into sandboxes
	standin    string // host path of the stand-in (== supervisor unless the real one is used)
	realSup    bool   // supervisor is the real openshell-sandbox
)

func TestMain(m *testing.M) {
	volumesBefore := volumeNames()
	code := m.Run()
	if standin != "" {
		// The build dir holds standin/ and real/: remove both.
		_ = os.RemoveAll(filepath.Dir(filepath.Dir(standin)))
	}
	if leaks := runLeaks(volumesBefore); len(leaks) > 0 {
		fmt.Fprintf(os.Stderr, "docker driver tests leaked:\n  %s\n", strings.Join(leaks, "\n  "))
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// volumeNames lists the daemon's volumes (nil when there is no daemon).
func volumeNames() map[string]bool {
	cli, err := client.New(client.FromEnv)
	if err != nil {
		return nil
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := cli.VolumeList(ctx, client.VolumeListOptions{})
	if err != nil {
		return nil
	}
	names := map[string]bool{}
	for _, v := range res.Items {
		names[v.Name] = true
	}
	return names
}

// runLeaks lists managed-by containers and networks of this test run, and volumes
// that appeared during it (anonymous volumes carry no labels).
func runLeaks(volumesBefore map[string]bool) []string {
	if volumesBefore == nil {
		return nil
	}
	cli, err := client.New(client.FromEnv)
	if err != nil {
		return nil
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var leaks []string
	f := make(client.Filters).Add("label", LabelManagedBy+"="+ManagedByValue)
	if cs, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f}); err == nil {
		for _, c := range cs.Items {
			if strings.HasPrefix(c.Labels[labelTestRun], testRunID) {
				leaks = append(leaks, "container "+c.ID[:12])
			}
		}
	}
	if ns, err := cli.NetworkList(ctx, client.NetworkListOptions{Filters: f}); err == nil {
		for _, n := range ns.Items {
			if strings.HasPrefix(n.Labels[labelTestRun], testRunID) {
				leaks = append(leaks, "network "+n.Name)
			}
		}
	}
	for name := range volumeNames() {
		if !volumesBefore[name] {
			leaks = append(leaks, "volume "+name)
		}
	}
	return leaks
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// repoRoot is the module root (two levels above this package).
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func dockerAnswers() bool {
	cli, err := client.New(client.FromEnv)
	if err != nil {
		return false
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err = cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true})
	return err == nil
}

// requireDocker skips (or fails under CI) without a daemon, and makes sure the test
// image and the supervisor binary exist.
func requireDocker(t testing.TB) {
	t.Helper()
	testenv.Require(t, dockerAnswers(), "Docker daemon not reachable; run scripts/setup-docker.sh")
	setupOnce.Do(func() {
		if out, err := exec.Command(filepath.Join(repoRoot(), "scripts/testimage/build.sh"), "busybox").CombinedOutput(); err != nil {
			setupErr = "build test image: " + err.Error() + ": " + string(out)
			return
		}
		supervisor, setupErr = buildSupervisor()
	})
	if setupErr != "" {
		t.Fatal(setupErr)
	}
}

// buildSupervisor builds the stand-in, and the real supervisor (./cmd/openshell-sandbox,
// CGO_ENABLED=0) unless OPENSHELL_DOCKER_TEST_SUPERVISOR=standin. Sandboxes run the real
// one when it builds; the stand-in (no gateway needed, reports the hand-off it got on
// stdout) serves the tests that check the hand-off or need an unconfined main process,
// and everything when the real one does not build.
func buildSupervisor() (string, string) {
	dir, err := os.MkdirTemp("", "openshell-docker-test-")
	if err != nil {
		return "", err.Error()
	}
	build := func(pkg, out string) string {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Dir = repoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return "build " + pkg + ": " + err.Error() + ": " + string(b)
		}
		return ""
	}
	standin = filepath.Join(dir, "standin", "openshell-sandbox")
	if msg := build("./drivers/docker/internal/standin", standin); msg != "" {
		return "", msg
	}
	if os.Getenv("OPENSHELL_DOCKER_TEST_SUPERVISOR") == "standin" {
		return standin, ""
	}
	out := filepath.Join(dir, "real", "openshell-sandbox")
	if msg := build("./cmd/openshell-sandbox", out); msg != "" {
		if os.Getenv("OPENSHELL_DOCKER_TEST_SUPERVISOR") == "real" {
			return "", msg
		}
		fmt.Fprintf(os.Stderr, "docker driver tests: the real supervisor does not build, using the stand-in: %s\n", msg)
		return standin, ""
	}
	realSup = true
	return out, ""
}

// withStandin makes cfg use the stand-in, for tests whose main process must run
// unconfined and without a gateway (the real supervisor holds it back or confines it).
func withStandin(cfg Config) Config {
	cfg.SupervisorBinary = standin
	return cfg
}

// testConfig is a driver config for one test: its own run label, network and state dir.
func testConfig(t testing.TB) Config {
	t.Helper()
	run := testRunID + "-" + strconv.FormatInt(testSeq.Add(1), 10)
	return Config{
		SupervisorBinary: supervisor,
		GatewayEndpoint:  "https://" + GatewayHost + ":17670",
		StateDir:         t.TempDir(),
		DefaultImage:     testImage,
		Network:          "openshell-test-" + run,
		StopTimeout:      5 * time.Second,
		ResyncInterval:   2 * time.Second,
		Labels:           map[string]string{labelTestRun: run},
	}
}

// newTestDriver opens a driver and registers cleanup: close it, then check that no
// container of this test run is left, then remove the test network.
func newTestDriver(t testing.TB, cfg Config) *Driver {
	t.Helper()
	d, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = d.Close() })
	t.Cleanup(func() { checkNoLeaks(t, cfg) })
	return d
}

// checkNoLeaks fails the test if containers of cfg's run remain (removing them so the
// next run starts clean), and removes the run's network.
func checkNoLeaks(t testing.TB, cfg Config) {
	t.Helper()
	cli, err := client.New(client.FromEnv)
	if err != nil {
		t.Errorf("leak check: %v", err)
		return
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	f := make(client.Filters).Add("label", labelTestRun+"="+cfg.Labels[labelTestRun])
	res, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		t.Errorf("leak check: list containers: %v", err)
	}
	for _, c := range res.Items {
		t.Errorf("leak: container %s (%v) of this test run was left behind", c.ID[:12], c.Names)
		_, _ = cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
	}
	if _, err := cli.NetworkRemove(ctx, cfg.Network, client.NetworkRemoveOptions{}); err != nil && !isNotFound(err) {
		t.Errorf("leak check: remove network %s: %v", cfg.Network, err)
	}
	nets, err := cli.NetworkList(ctx, client.NetworkListOptions{Filters: f})
	if err == nil && len(nets.Items) > 0 {
		t.Errorf("leak: %d networks of this test run remain", len(nets.Items))
	}
}

// dockerCLI runs the docker CLI (for assertions independent of the driver's client).
func dockerCLI(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func execCommand(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}
