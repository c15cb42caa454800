package vm_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/drivers/vm/internal/state"
	"github.com/openshell/openshell/drivers/vm/internal/testimage"
	"github.com/openshell/openshell/internal/procstat"
	"github.com/openshell/openshell/internal/testenv"
	"github.com/openshell/openshell/vmm/channel"
)

var (
	realSupOnce sync.Once
	realSup     string
	realSupErr  error
)

// realSupervisor builds (once) the static openshell-sandbox the guests boot as init.
func realSupervisor(t testing.TB) string {
	t.Helper()
	realSupOnce.Do(func() {
		realSup = filepath.Join(fixtureDir, "openshell-sandbox-real")
		cmd := exec.Command("go", "build", "-o", realSup, "github.com/openshell/openshell/cmd/openshell-sandbox")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			realSupErr = fmt.Errorf("build openshell-sandbox: %v\n%s", err, out)
		}
	})
	if realSupErr != nil {
		t.Fatal(realSupErr)
	}
	return realSup
}

// staticBusybox finds a static busybox for test images (skips, or fails under CI).
func staticBusybox(t testing.TB) string {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	testenv.Require(t, err == nil && testimage.IsStatic(bb), "a static busybox is needed for the test image: apt-get install busybox-static")
	return bb
}

// countingRegistry is an in-process registry on 127.0.0.1 that counts the requests
// it served, so a test can tell the image really came from it.
type countingRegistry struct {
	srv              *httptest.Server
	manifests, blobs atomic.Int64
}

func newCountingRegistry(t testing.TB) *countingRegistry {
	t.Helper()
	r := &countingRegistry{}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method == http.MethodGet {
			switch {
			case strings.Contains(req.URL.Path, "/manifests/"):
				r.manifests.Add(1)
			case strings.Contains(req.URL.Path, "/blobs/"):
				r.blobs.Add(1)
			}
		}
		reg.ServeHTTP(w, req)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *countingRegistry) host() string { return strings.TrimPrefix(r.srv.URL, "http://") }

// TestImageSourcesAndTransports boots the real supervisor from a multi-layer busybox
// image taken from each non-layout source (a plain-HTTP registry on 127.0.0.1, an OCI
// archive) over each host↔guest transport, one VM at a time: Ready means the guest's
// supervisor fetched its bootstrap config over that transport.
func TestImageSourcesAndTransports(t *testing.T) {
	if testing.Short() {
		t.Skip("boots real VMs")
	}
	vmFixture(t)
	bb := staticBusybox(t)
	sup := realSupervisor(t)
	img, err := testimage.Busybox(bb, nil)
	if err != nil {
		t.Fatal(err)
	}
	digest, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if ls, _ := img.Layers(); len(ls) < 2 {
		t.Fatalf("test image has %d layers, want a multi-layer image", len(ls))
	}

	reg := newCountingRegistry(t)
	tag, err := name.NewTag(reg.host() + "/openshell/test:latest")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("push to the in-process registry: %v", err)
	}
	archive := filepath.Join(fixtureDir, "sources-test.oci.tar")
	if err := testimage.WriteOCIArchive(archive, img, "latest"); err != nil {
		t.Fatal(err)
	}

	sources := []struct {
		name, ref string
		fetched   func() bool
	}{
		{"registry", reg.host() + "/openshell/test:latest", func() bool { return reg.manifests.Load() > 0 && reg.blobs.Load() > 0 }},
		{"oci-archive", "oci-archive:" + archive, func() bool { return true }},
	}
	for _, tr := range []string{channel.TransportVhostUserVsock, channel.TransportVirtioSerial} {
		for _, src := range sources {
			t.Run(tr+"/"+src.name, func(t *testing.T) {
				if tr == channel.TransportVhostUserVsock {
					_, err := channel.FindVsockBackend()
					testenv.Require(t, err == nil, fmt.Sprintf("%v", err))
				}
				reg.manifests.Store(0)
				reg.blobs.Store(0)
				gw := newGatewayStub(t)
				dir := shortDir(t)
				cfg := testConfig(t, dir, gw.addr())
				cfg.Transport = tr
				cfg.SupervisorBinary = sup
				cfg.ImageCacheDir = "" // per case (<state dir>/images): each case really reads its source
				cfg.MemoryMiB = 384
				d := newTestDriver(t, cfg)
				defer d.Close()

				id, sbName := drivertest.NewIDs()
				sb := drivertest.DefaultSandbox(id, sbName, src.ref)
				t0 := time.Now()
				if err := d.Create(t.Context(), sb); err != nil {
					t.Fatalf("Create: %v", err)
				}
				deleted := false
				defer func() {
					if !deleted {
						d.Delete(context.Background(), id, "")
					}
				}()
				got := waitFor(t, d, id, "Ready", ready)
				took := time.Since(t0)
				t.Logf("%s from %s: create → Ready %v", tr, src.name, took.Round(time.Millisecond))

				c := drivers.FindCondition(got.GetStatus(), drivers.ConditionReady)
				if c.GetReason() != drivers.ReasonRunning || !strings.Contains(c.GetMessage(), "guest booted at") {
					t.Errorf("Ready condition %v: want reason %s and the guest's boot time", c, drivers.ReasonRunning)
				}
				if !src.fetched() {
					t.Errorf("the image did not come from the %s source (registry manifests=%d blobs=%d)", src.name, reg.manifests.Load(), reg.blobs.Load())
				}
				rec := record(t, dir, id)
				if rec.ImageDigest != digest.String() {
					t.Errorf("record image digest %q, want the pushed image's %s", rec.ImageDigest, digest)
				}
				runnerLog, _ := os.ReadFile(rec.Paths.RunnerLog)
				if !strings.Contains(string(runnerLog), "transport="+tr) {
					t.Errorf("runner log does not show transport %s:\n%s", tr, tail(runnerLog, 3000))
				}
				if !strings.Contains(string(runnerLog), "guest fetched its bootstrap config") {
					t.Errorf("runner log does not show the bootstrap fetch over the channel:\n%s", tail(runnerLog, 3000))
				}
				cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", rec.VMMPID))
				wantDev := map[string]string{channel.TransportVhostUserVsock: "vhost-user-vsock", channel.TransportVirtioSerial: "virtserialport"}[tr]
				if !strings.Contains(string(cmdline), wantDev) {
					t.Errorf("QEMU command line lacks %s: %q", wantDev, strings.ReplaceAll(string(cmdline), "\x00", " "))
				}
				// The guest's init (the real supervisor) mounted the image's root and went on.
				console := state.Tail(rec.Paths.ConsoleLog, 20000)
				if !strings.Contains(console, "root ready") {
					t.Errorf("console shows no guest init progress:\n%s", console)
				}

				members := procstat.SessionMembers(rec.RunnerPID, rec.RunnerStart)
				ok, err := d.Delete(t.Context(), id, "")
				if err != nil || !ok {
					t.Fatalf("Delete = %v, %v", ok, err)
				}
				deleted = true
				assertNoLeftovers(t, dir, rec, members)
				if _, err := d.Get(t.Context(), id, ""); err == nil {
					t.Errorf("Get after Delete still finds %s", id)
				}
			})
		}
	}
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
