package podman

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/containers"
	"github.com/openshell/openshell/internal/testenv"
)

// Integration tests run against the real rootful and rootless Podman 5 services that
// scripts/setup-podman.sh starts. Everything a test creates carries
// openshell.ai/test-run=<run>-<n> (through Config.Labels), so tests check that they
// leak nothing and clean up only what they made.

const testImage = "openshell-test/busybox:latest"

var (
	testRunID  = randHex(4)
	testSeq    atomic.Int64
	setupOnce  sync.Once
	setupErr   string
	supervisor string // host path of the real supervisor, readable by the rootless user
	tmpBase    string // 0711 dir for state dirs the rootless service must reach
)

// mode is one Podman service under test.
type mode struct {
	name   string // "rootful" or "rootless"
	socket string
	user   string // the service's user ("" = root)
}

func rootlessUser() string {
	if u := os.Getenv("OPENSHELL_PODMAN_USER"); u != "" {
		return u
	}
	return "openshell-podman"
}

func modes() []mode {
	rootful := os.Getenv("OPENSHELL_PODMAN_ROOTFUL_SOCK")
	if rootful == "" {
		rootful = RootfulSocket
	}
	rootless := os.Getenv("OPENSHELL_PODMAN_ROOTLESS_SOCK")
	if rootless == "" {
		if u, err := user.Lookup(rootlessUser()); err == nil {
			rootless = "/run/user/" + u.Uid + "/podman/podman.sock"
		}
	}
	return []mode{{"rootful", rootful, ""}, {"rootless", rootless, rootlessUser()}}
}

func podmanBin() string {
	if b := os.Getenv("OPENSHELL_PODMAN_BIN"); b != "" {
		return b
	}
	out, err := exec.Command(filepath.Join(repoRoot(), "scripts/setup-podman.sh"), "env").Output()
	if err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			if v, ok := strings.CutPrefix(l, "OPENSHELL_PODMAN_BIN="); ok {
				return v
			}
		}
	}
	return "podman"
}

func TestMain(m *testing.M) {
	// Tests run on cgroups v1 hosts only with the documented switch.
	os.Setenv(EnvAllowCgroupsV1, "1")
	before := map[string]map[string]bool{}
	for _, md := range modes() {
		before[md.socket] = volumeNames(md.socket)
	}
	code := m.Run()
	var leaks []string
	for _, md := range modes() {
		leaks = append(leaks, runLeaks(md, before[md.socket])...)
	}
	if tmpBase != "" {
		_ = os.RemoveAll(tmpBase)
	}
	if len(leaks) > 0 {
		fmt.Fprintf(os.Stderr, "podman driver tests leaked:\n  %s\n", strings.Join(leaks, "\n  "))
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func volumeNames(socket string) map[string]bool {
	if !answers(socket) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var vols []struct {
		Name string `json:"Name"`
	}
	if err := newClient(socket).call(ctx, "GET", apiPrefix+"/volumes/json", nil, nil, &vols, "list volumes"); err != nil {
		return nil
	}
	names := map[string]bool{}
	for _, v := range vols {
		names[v.Name] = true
	}
	return names
}

// runLeaks lists managed-by containers, pods and networks of this test run, and
// volumes that appeared during it (anonymous volumes carry no labels).
func runLeaks(md mode, volsBefore map[string]bool) []string {
	if volsBefore == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := newClient(md.socket)
	sel := map[string]string{drivers.LabelManagedBy: drivers.ManagedByValue}
	var leaks []string
	if cs, err := c.containerList(ctx, sel); err == nil {
		for _, it := range cs {
			if strings.HasPrefix(it.Labels[labelTestRun], testRunID) {
				leaks = append(leaks, md.name+" container "+containers.ShortID(it.ID))
			}
		}
	} else {
		leaks = append(leaks, md.name+": list containers: "+err.Error())
	}
	var pods []struct {
		Name   string            `json:"Name"`
		Labels map[string]string `json:"Labels"`
	}
	q := map[string][]string{"filters": {labelFilters(nil, sel)}}
	if err := c.call(ctx, "GET", apiPrefix+"/pods/json", q, nil, &pods, "list pods"); err == nil {
		for _, p := range pods {
			leaks = append(leaks, md.name+" pod "+p.Name)
		}
	}
	var nets []struct {
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels"`
	}
	if err := c.call(ctx, "GET", apiPrefix+"/networks/json", q, nil, &nets, "list networks"); err == nil {
		for _, n := range nets {
			leaks = append(leaks, md.name+" network "+n.Name)
		}
	}
	for name := range volumeNames(md.socket) {
		if !volsBefore[name] {
			leaks = append(leaks, md.name+" volume "+name)
		}
	}
	return leaks
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func answers(socket string) bool {
	if socket == "" {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	p, err := newClient(socket).ping(ctx)
	return err == nil && p.LibpodAPIVersion != ""
}

// requirePodman skips (or fails under CI) without the service, and makes sure the
// test image and the supervisor binary exist.
func requirePodman(t testing.TB, md mode) {
	t.Helper()
	testenv.Require(t, answers(md.socket), "the "+md.name+" Podman service does not answer on "+md.socket+"; run scripts/setup-podman.sh")
	setupOnce.Do(func() {
		cmd := exec.Command(filepath.Join(repoRoot(), "scripts/testimage/build.sh"), "busybox")
		cmd.Env = append(os.Environ(), "ENGINE=podman")
		if out, err := cmd.CombinedOutput(); err != nil {
			setupErr = "build test image: " + err.Error() + ": " + string(out)
			return
		}
		supervisor, setupErr = buildSupervisor()
	})
	if setupErr != "" {
		t.Fatal(setupErr)
	}
}

func buildSupervisor() (string, string) {
	var err error
	tmpBase, err = os.MkdirTemp("", "openshell-podman-test-")
	if err != nil {
		return "", err.Error()
	}
	// The rootless service's user reaches the binary and the state dirs through here.
	if err := os.Chmod(tmpBase, 0o711); err != nil {
		return "", err.Error()
	}
	out := filepath.Join(tmpBase, "openshell-sandbox")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/openshell-sandbox")
	cmd.Dir = repoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", "build the supervisor: " + err.Error() + ": " + string(b)
	}
	return out, ""
}

// stateDir is a fresh state dir the rootless service can reach.
func stateDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp(tmpBase, "state-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// testConfig is a driver config for one test: its own run label and state dir.
func testConfig(t testing.TB, md mode) Config {
	t.Helper()
	run := testRunID + "-" + strconv.FormatInt(testSeq.Add(1), 10)
	return Config{
		Socket:           md.socket,
		SupervisorBinary: supervisor,
		GatewayEndpoint:  "https://" + drivers.GatewayHost + ":17670",
		StateDir:         stateDir(t),
		DefaultImage:     testImage,
		StopTimeout:      5 * time.Second,
		ResyncInterval:   2 * time.Second,
		Labels:           map[string]string{labelTestRun: run},
	}
}

// newTestDriver opens a driver and registers cleanup: close it, then check that no
// container of this test run is left.
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

// checkNoLeaks fails the test if containers of cfg's run remain (removing them).
func checkNoLeaks(t testing.TB, cfg Config) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := newClient(cfg.Socket)
	defer c.close()
	items, err := c.containerList(ctx, map[string]string{labelTestRun: cfg.Labels[labelTestRun]})
	if err != nil {
		t.Errorf("leak check: list containers: %v", err)
	}
	for _, it := range items {
		t.Errorf("leak: container %s (%v) of this test run was left behind", containers.ShortID(it.ID), it.Names)
		_ = c.containerRemove(ctx, it.ID)
	}
}

// podmanCLI runs the podman CLI against md's service (for assertions independent of
// the driver's client).
func podmanCLI(t testing.TB, md mode, args ...string) string {
	t.Helper()
	out, err := exec.Command(podmanBin(), append([]string{"--remote", "--url", "unix://" + md.socket}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("podman %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}
