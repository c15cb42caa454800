package podman

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/internal/gpu"
	"github.com/openshell/openshell/internal/testenv"
)

// A CDI spec listing one GPU whose edits only set an environment variable: a stand-in
// for a real GPU's spec (this host has none) that Podman applies for real, so the
// test sees the device reach the container.
const oneGPUSpec = `cdiVersion: 0.6.0
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits:
    env: [OPENSHELL_TEST_GPU=0]
- name: all
  containerEdits:
    env: [OPENSHELL_TEST_GPU=all]
`

// The spec goes into /var/run/cdi, where the rootful service looks (Podman 5.4 does
// not honour cdi_spec_dirs from containers.conf), under a name of its own that is
// removed at cleanup: --gpu 1 and the device id 0 reach the container; --gpu 2,
// count 0 and an unlisted id are refused before anything is created.
func TestGPUThroughCDI(t *testing.T) {
	md := modes()[0]
	requirePodman(t, md)
	testenv.RequireRoot(t)
	for _, dir := range DefaultCDISpecDirs {
		devs := gpu.ReadCDI([]string{dir}).Devices(gpu.DefaultCDIKind)
		testenv.Require(t, len(devs) == 0, dir+" lists real "+gpu.DefaultCDIKind+" devices; this test adds a fake one")
	}
	if err := os.MkdirAll("/var/run/cdi", 0o755); err != nil {
		t.Fatal(err)
	}
	spec := filepath.Join("/var/run/cdi", "openshell-test-"+testRunID+".yaml")
	if err := os.WriteFile(spec, []byte(oneGPUSpec), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(spec) })
	cfg := testConfig(t, md)
	d := newTestDriver(t, cfg)
	ctx := t.Context()

	gpuSB := func(count *uint32, ids ...string) *computev1.DriverSandbox {
		id, name := drivertest.NewIDs()
		sb := drivertest.DefaultSandbox(id, name, testImage)
		sb.Spec.ResourceRequirements = &computev1.ResourceRequirements{Gpu: &computev1.GpuResourceRequirements{Count: count}}
		if len(ids) > 0 {
			l := make([]any, len(ids))
			for i, s := range ids {
				l[i] = s
			}
			sb.Spec.Template.DriverConfig, _ = structpb.NewStruct(map[string]any{DriverConfigGPUDevices: l})
			sb.Spec.ResourceRequirements = nil
		}
		return sb
	}
	n := func(v uint32) *uint32 { return &v }

	for _, sb := range []*computev1.DriverSandbox{gpuSB(n(1)), gpuSB(nil, "0")} {
		got := createReady(ctx, t, d, sb)
		cname := containerName(got.GetName())
		if env := podmanCLI(t, md, "exec", cname, "sh", "-c", "tr \"\\\\0\" \"\\\\n\" < /proc/1/environ | sed -n s/^OPENSHELL_TEST_GPU=//p"); env != "0" {
			t.Errorf("GPU device in the container: OPENSHELL_TEST_GPU=%q, want 0", env)
		}
	}
	for _, tc := range []struct {
		what string
		sb   *computev1.DriverSandbox
		want error
		msg  string
	}{
		{"two GPUs, one listed", gpuSB(n(2)), drivers.ErrFailedPrecondition, "gpu count 2"},
		{"count 0", gpuSB(n(0)), drivers.ErrInvalidArgument, "count 0"},
		{"unlisted device", gpuSB(nil, "7"), drivers.ErrInvalidArgument, `"7"`},
	} {
		err := d.Create(ctx, tc.sb)
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: Create = %v; want %v mentioning %q", tc.what, err, tc.want, tc.msg)
		}
		if _, err := d.Get(ctx, tc.sb.GetId(), ""); !errors.Is(err, drivers.ErrNotFound) {
			t.Errorf("%s: a refused create left a sandbox: %v", tc.what, err)
		}
	}
}
