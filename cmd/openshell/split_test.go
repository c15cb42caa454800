package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/openshell/openshell/gateway/doctor"
	"github.com/openshell/openshell/internal/testenv"
)

// The CLI starts on every sandbox command (exec, create, get, upload), so it links
// only what those need: the compute drivers, the engine and Kubernetes clients and
// the gateway server live in openshell-gateway, which the CLI runs for `doctor`,
// `sandbox create --from <dir>` and `vm images`.
var cliForbidden = []string{
	"k8s.io/",
	"sigs.k8s.io/",
	"github.com/moby/",
	"github.com/docker/",
	"github.com/containers/",
	"github.com/google/go-containerregistry/",
	"github.com/openshell/openshell/drivers",
	"github.com/openshell/openshell/images",
	"github.com/openshell/openshell/gateway/daemon",
	"github.com/openshell/openshell/gateway/driversel",
}

// cliMaxPackages bounds the CLI's dependency count. When the split was made: 981 ->
// 389 packages, binary 81.3 -> 23.7 MB, init (GODEBUG=inittrace=1) 40.8 -> 13.5 ms
// and 4.06 -> 0.64 MB allocated. Raise it only for a package every sandbox command
// needs.
const cliMaxPackages = 420

func TestCLIDependencies(t *testing.T) {
	goBin, err := exec.LookPath("go")
	testenv.Require(t, err == nil, "the go command is needed to list the CLI's packages")
	out, err := exec.Command(goBin, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	for _, d := range deps {
		if d == "github.com/openshell/openshell/gateway" {
			t.Errorf("the CLI links the gateway server package; share what it needs through a small package (internal/version)")
		}
		for _, f := range cliForbidden {
			if strings.HasPrefix(d, f) {
				t.Errorf("the CLI links %s (forbidden: %s*); run that code in openshell-gateway (see delegate.go, doctor.go, from.go)", d, f)
			}
		}
	}
	if len(deps) > cliMaxPackages {
		t.Errorf("the CLI links %d packages, more than %d: every sandbox command pays for their start-up", len(deps), cliMaxPackages)
	}
	t.Logf("%d packages", len(deps))
}

func doctorJSON(t *testing.T) []doctor.Finding {
	t.Helper()
	out, err := runCLI(t, "doctor", "-o", "json")
	if err != nil {
		t.Fatalf("doctor -o json: %v\n%s", err, out)
	}
	var fs []doctor.Finding
	if err := json.Unmarshal([]byte(out), &fs); err != nil {
		t.Fatalf("doctor -o json is not a findings list: %v\n%s", err, out)
	}
	return fs
}

func checkNames(fs []doctor.Finding) []string {
	var names []string
	for _, f := range fs {
		names = append(names, f.Check)
	}
	return names
}

// TestDoctorMergesGatewayHostChecks runs `openshell doctor` with the real
// openshell-gateway next to it: the host checks the CLI does not link come back in
// their usual order after the gateway's health; without the binary the report says
// so and still has the checks the CLI carries.
func TestDoctorMergesGatewayHostChecks(t *testing.T) {
	tmp := cliEnv(t, "openshell-gateway")
	fs := doctorJSON(t)
	names := checkNames(fs)
	idx := func(prefix string) int {
		return slices.IndexFunc(names, func(n string) bool { return strings.HasPrefix(n, prefix) })
	}
	order := []string{"gateway", "driver.autodetect", "gpu", "kubernetes", "vm.driver"}
	last := -1
	for _, c := range order {
		i := idx(c)
		if i < 0 {
			t.Fatalf("doctor lacks %s: %v", c, names)
		}
		if i < last {
			t.Errorf("%s out of order: %v", c, names)
		}
		last = i
	}
	if fs[0].Status != doctor.Warn || fs[0].Fix != "openshell gateway start" {
		t.Errorf("no gateway runs, yet: %+v", fs[0])
	}
	if i := idx("host.drivers"); i >= 0 {
		t.Errorf("the gateway binary is there, yet: %+v", fs[i])
	}
	table, err := runCLI(t, "doctor")
	if err != nil || !strings.HasPrefix(table, "CHECK") || !strings.Contains(table, "driver.autodetect") {
		t.Errorf("doctor table: %v\n%s", err, table)
	}

	// No gateway binary: one finding says which checks did not run and how to fix it.
	t.Setenv("OPENSHELL_GATEWAY_BIN", filepath.Join(tmp, "missing", "openshell-gateway"))
	fs = doctorJSON(t)
	names = checkNames(fs)
	if i := idx("host.drivers"); i != 1 || fs[i].Status != doctor.Warn || !strings.Contains(fs[i].Detail, "missing/openshell-gateway") ||
		!strings.Contains(fs[i].Fix, "openshell-gateway") {
		t.Errorf("missing binary: %+v", fs)
	}
	if idx("gpu") < 0 || idx("driver.autodetect") >= 0 {
		t.Errorf("missing binary: want the CLI's own GPU check only: %v", names)
	}

	// A binary that fails without a report: its exit status and message are shown.
	broken := filepath.Join(tmp, "broken-gateway")
	if err := os.WriteFile(broken, []byte("#!/bin/sh\necho 'openshell-gateway: cannot read config' >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("OPENSHELL_GATEWAY_BIN", broken)
	fs = doctorJSON(t)
	if i := slices.IndexFunc(fs, func(f doctor.Finding) bool { return f.Check == "host.drivers" }); i < 0 ||
		!strings.Contains(fs[i].Detail, "exit status 3") || !strings.Contains(fs[i].Detail, "cannot read config") {
		t.Errorf("broken binary: %+v", fs)
	}
}

// TestVMImagesRunInGateway: `vm images` runs in openshell-gateway with the same
// flags, output, errors (exit code 2 for a usage error) and completion.
func TestVMImagesRunInGateway(t *testing.T) {
	tmp := cliEnv(t, "openshell-gateway")
	cache := filepath.Join(tmp, "cache")
	out, err := runCLI(t, "vm", "images", "list", "-o", "json", "--cache-dir", cache)
	if err != nil || strings.TrimSpace(out) != "[]" {
		t.Fatalf("vm images list -o json on an empty cache: %v\n%q", err, out)
	}
	out, err = runCLI(t, "-g", "other", "vm", "images", "prune", "--cache-dir", cache)
	if err != nil {
		t.Fatalf("vm images prune after a global flag: %v\n%s", err, out)
	}
	help, err := runCLI(t, "vm", "images", "list", "--help")
	if err != nil || !strings.Contains(help, "openshell vm images list [flags]") || !strings.Contains(help, "--cache-dir") {
		t.Errorf("help: %v\n%s", err, help)
	}
	_, err = runCLI(t, "vm", "images", "list", "--bogus")
	if err == nil || err.Error() != "unknown flag: --bogus" || exitCode(err.(*cliErr).err) != 2 {
		t.Errorf("bad flag: %v (want the flag named, exit code 2)", err)
	}
	out, err = runCLI(t, "__complete", "vm", "images", "p")
	if err != nil || !strings.Contains(out, "prune\t") || strings.Contains(out, "list\t") {
		t.Errorf("completion: %v\n%s", err, out)
	}
	t.Setenv("OPENSHELL_GATEWAY_BIN", filepath.Join(tmp, "missing"))
	_, err = runCLI(t, "vm", "images", "list")
	if err == nil || !strings.Contains(err.Error(), "openshell vm images") || !strings.Contains(err.Error(), "missing") {
		t.Errorf("no gateway binary: %v", err)
	}
}

// TestFromBuildNeedsGateway: without openshell-gateway a local --from build says
// where builds run and which path was tried.
func TestFromBuildNeedsGateway(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("OPENSHELL_GATEWAY_BIN", filepath.Join(dir, "missing"))
	_, err := resolveFrom(t.Context(), dir, "x", "docker", engineBuild("docker"), os.Stdout)
	if err == nil || !strings.Contains(err.Error(), "build failed: the image build runs in openshell-gateway") || !strings.Contains(err.Error(), filepath.Join(dir, "missing")) {
		t.Errorf("missing gateway binary: %v", err)
	}
}
