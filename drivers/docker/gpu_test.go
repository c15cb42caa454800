package docker

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/internal/testenv"
)

// cdiDockerd is where scripts/setup-docker-cdi.sh puts a CDI-capable dockerd (the
// system's 20.10 has no CDI and reports no spec directories).
const cdiDockerd = "/var/lib/openshell/docker-cdi/usr/sbin/dockerd"

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

// startCDIDaemon starts a private real dockerd whose CDI spec directory holds a spec
// listing one GPU, with one tiny imported image; it is stopped (by PID) at cleanup.
func startCDIDaemon(t *testing.T) (host, cdiDir, image string, cli *client.Client) {
	t.Helper()
	testenv.RequireRoot(t)
	_, err := os.Stat(cdiDockerd)
	testenv.Require(t, err == nil, cdiDockerd+" missing: run scripts/setup-docker-cdi.sh")
	cdiDir = filepath.Join(t.TempDir(), "cdi")
	if err := os.MkdirAll(cdiDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cdiDir, "nvidia.yaml"), []byte(oneGPUSpec), 0o644); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(filepath.Dir(cdiDir), "daemon.json")
	if err := os.WriteFile(conf, []byte(`{"features":{"cdi":true},"cdi-spec-dirs":["`+cdiDir+`"]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	// Like every private daemon, in a network namespace of its own: a dockerd started
	// with --bridge none in the host's namespace deletes the shared daemon's docker0.
	p := startPrivateDockerdWith(t, cdiDockerd, "--config-file", conf)
	host = p.host
	cli, err = client.New(client.WithHost(host))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	tw.WriteHeader(&tar.Header{Name: "hello", Mode: 0o644, Size: 2})
	tw.Write([]byte("hi"))
	tw.Close()
	image = "openshell-test/cdi:latest"
	res, err := cli.ImageImport(t.Context(), client.ImageImportSource{Source: &tb, SourceName: "-"}, image, client.ImageImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	res.Close()
	return host, cdiDir, image, cli
}

// Against a real daemon whose CDI specs list one GPU: `--gpu 2` fails with a clear
// error before any container exists; one GPU resolves to the spec's device; unknown
// ids and a zero count are refused.
func TestGPUCountCheckedAgainstDaemonCDI(t *testing.T) {
	host, cdiDir, image, cli := startCDIDaemon(t)
	sup, _ := os.Executable()
	cfg := Config{Host: host, SupervisorBinary: sup, GatewayEndpoint: "https://" + GatewayHost + ":17670",
		StateDir: t.TempDir(), DefaultImage: image, Network: "openshell-cdi-test", StopTimeout: 5 * time.Second}
	d, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Close()
		// dockerd leaves a network's bridge on the host when it stops: remove it first.
		if _, err := cli.NetworkRemove(context.Background(), cfg.Network, client.NetworkRemoveOptions{}); err != nil {
			t.Errorf("remove network %s: %v", cfg.Network, err)
		}
	})
	if !slices.Equal(d.cdiDirs, []string{cdiDir}) {
		t.Fatalf("daemon reports CDI dirs %v, want [%s]", d.cdiDirs, cdiDir)
	}
	gpuSB := func(count *uint32, ids ...string) *computev1.DriverSandbox {
		id, name := drivertest.NewIDs()
		sb := drivertest.DefaultSandbox(id, name, image)
		if count != nil || len(ids) == 0 {
			sb.Spec.ResourceRequirements = &computev1.ResourceRequirements{Gpu: &computev1.GpuResourceRequirements{Count: count}}
		}
		if len(ids) > 0 {
			l := []any{}
			for _, s := range ids {
				l = append(l, s)
			}
			sb.Spec.Template.DriverConfig, _ = structpb.NewStruct(map[string]any{DriverConfigGPUDevices: l})
		}
		return sb
	}
	n := func(v uint32) *uint32 { return &v }
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	for _, tc := range []struct {
		name string
		sb   *computev1.DriverSandbox
		is   error
		says []string
	}{
		{"2 GPUs, 1 listed", gpuSB(n(2)), drivers.ErrFailedPrecondition, []string{"gpu count 2", cdiDir, "list 1 nvidia.com/gpu device(s) (0)"}},
		{"unknown device id", gpuSB(nil, "1"), drivers.ErrInvalidArgument, []string{`gpu device "1"`, "nvidia.com/gpu: 0"}},
		{"count 0", gpuSB(n(0)), drivers.ErrInvalidArgument, []string{"resource_requirements.gpu.count 0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, op := range []string{"ValidateCreate", "Create"} {
				var err error
				if op == "Create" {
					err = d.Create(ctx, tc.sb)
				} else {
					err = d.ValidateCreate(ctx, tc.sb)
				}
				if !errors.Is(err, tc.is) {
					t.Fatalf("%s = %v, want %v", op, err, tc.is)
				}
				for _, s := range tc.says {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("%s: %q does not say %q", op, err, s)
					}
				}
			}
			res, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Items) != 0 {
				t.Errorf("%d container(s) exist after a refused create", len(res.Items))
			}
		})
	}
	for _, tc := range []struct {
		sb   *computev1.DriverSandbox
		want []string
	}{
		{gpuSB(nil), []string{"nvidia.com/gpu=0"}},
		{gpuSB(n(1)), []string{"nvidia.com/gpu=0"}},
		{gpuSB(nil, "nvidia.com/gpu=0"), []string{"nvidia.com/gpu=0"}},
	} {
		p, err := d.plan(ctx, tc.sb)
		if err != nil {
			t.Fatal(err)
		}
		if p.gpu == nil || p.gpu.Driver != "cdi" || !slices.Equal(p.gpu.DeviceIDs, tc.want) {
			t.Errorf("device request %+v, want cdi %v", p.gpu, tc.want)
		}
	}
}
