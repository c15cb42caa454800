package vm_test

import (
	"archive/tar"
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/drivers/vm"
	"github.com/openshell/openshell/drivers/vm/internal/state"
	"github.com/openshell/openshell/drivers/vm/ocilayout"
	"github.com/openshell/openshell/images"
	"github.com/openshell/openshell/images/bundle"
	"github.com/openshell/openshell/internal/procstat"
	"github.com/openshell/openshell/supervisor/bootstrap"
	"github.com/openshell/openshell/vmm"
	"github.com/openshell/openshell/vmm/channel"
	"github.com/openshell/openshell/vmm/qemu"
)

// TestBenchCreateReady measures, with OPENSHELL_BENCH=1:
//
//   - bare QEMU: VMM start → the guest dials the bootstrap port (same kernel, initramfs
//     and disks, no driver, no runner);
//
//   - driver create → Ready for 10 sandboxes one after another and 12 four at a time;
//
//   - host memory per idle VM sandbox (runner + QEMU + vsock backend), RSS and PSS.
//
//     OPENSHELL_BENCH=1 go test ./drivers/vm -run TestBenchCreateReady -v -timeout 30m
func TestBenchCreateReady(t *testing.T) {
	if os.Getenv("OPENSHELL_BENCH") != "1" {
		t.Skip("benchmark: set OPENSHELL_BENCH=1")
	}
	guestBin, image := vmFixture(t)
	gw := newGatewayStub(t)
	dir := shortDir(t)
	cfg := testConfig(t, dir, gw.addr())
	d := newTestDriver(t, cfg)
	defer d.Close()

	// Warm caches (image disk, initramfs) so every sample measures the same work.
	id := create(t, d, image)
	waitFor(t, d, id, "Ready (warm-up)", ready)
	d.Delete(t.Context(), id, "")

	bare := bareQEMU(t, guestBin, image, cfg, 10)
	if os.Getenv("OPENSHELL_BENCH_BARE_ONLY") == "1" {
		printStats(t, "bare", bare)
		return
	}
	printStats(t, "bare QEMU start → guest dials bootstrap (10 sequential)", bare)

	var seq []time.Duration
	for range 10 {
		seq = append(seq, createReady(t, d, image, 1)...)
	}
	printStats(t, "driver create → Ready (10 sequential)", seq)

	var par []time.Duration
	for range 3 {
		par = append(par, createReady(t, d, image, 4)...)
	}
	printStats(t, "driver create → Ready (4 at a time, 12 total)", par)

	// Memory: four idle sandboxes.
	var ids []string
	for range 4 {
		id := create(t, d, image)
		ids = append(ids, id)
		defer d.Delete(context.Background(), id, "")
	}
	for _, id := range ids {
		waitFor(t, d, id, "Ready", ready)
	}
	time.Sleep(5 * time.Second) // let the guests settle
	var rss, pss int64
	for _, id := range ids {
		rec := record(t, dir, id)
		r, p := sessionMemory(rec.RunnerPID, rec.RunnerStart)
		t.Logf("sandbox %s: runner+qemu+helpers RSS %d MiB, PSS %d MiB (guest memory %d MiB)", id, r>>10, p>>10, rec.MemoryMiB)
		rss += r
		pss += p
	}
	t.Logf("per process (first sandboxes): %s", strings.Join(memLog[:min(len(memLog), 3)], "; "))
	t.Logf("BENCH memory per idle VM sandbox: RSS %.1f MiB, PSS %.1f MiB (avg of %d, guest %d MiB, TCG)", float64(rss)/1024/float64(len(ids)), float64(pss)/1024/float64(len(ids)), len(ids), 300)
}

// createReady creates n sandboxes at once and returns each create → Ready time; it
// deletes them afterwards.
func createReady(t *testing.T, d drivers.Driver, image string, n int) []time.Duration {
	t.Helper()
	var (
		mu  sync.Mutex
		out []time.Duration
		wg  sync.WaitGroup
	)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id, name := drivertest.NewIDs()
			sb := drivertest.DefaultSandbox(id, name, image)
			sb.Spec.Template.Resources = &computev1.DriverResourceRequirements{CpuLimit: "1", MemoryLimit: "300Mi"}
			t0 := time.Now()
			if err := d.Create(t.Context(), sb); err != nil {
				t.Errorf("Create: %v", err)
				return
			}
			defer d.Delete(context.Background(), id, "")
			for time.Since(t0) < vmTimeout {
				got, err := d.Get(t.Context(), id, "")
				if err == nil && ready(got) {
					mu.Lock()
					out = append(out, time.Since(t0))
					mu.Unlock()
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
			t.Errorf("%s not ready within %v", id, vmTimeout)
		}()
	}
	wg.Wait()
	return out
}

// bareQEMU boots the same guest straight through vmm/qemu n times and measures VMM
// start → the guest's bootstrap dial.
func bareQEMU(t *testing.T, guestBin, image string, cfg vm.Config, n int) []time.Duration {
	t.Helper()
	kernel, err := bundle.FindKernel("")
	if err != nil {
		t.Fatal(err)
	}
	mods, _ := bundle.ModulesDir(kernel)
	initrd, err := bundle.BuildInitramfs(t.Context(), guestBin, mods, filepath.Join(fixtureDir, "bench-initramfs"))
	if err != nil {
		t.Fatal(err)
	}
	cache, err := images.NewCache(cfg.ImageCacheDir)
	if err != nil {
		t.Fatal(err)
	}
	entry, err := cache.Ensure(t.Context(), image, nil)
	if err != nil {
		t.Fatal(err)
	}
	doc, _ := json.Marshal(bootstrap.Config{Endpoint: "http://host.openshell.internal:1", SandboxID: "bare", Token: "x"})
	var out []time.Duration
	for i := range n {
		sd := shortDir(t)
		disk := filepath.Join(sd, "disk.img")
		if err := vmm.CreateWritableDisk(disk, 64<<20); err != nil {
			t.Fatal(err)
		}
		m, err := qemu.New(vmm.Config{
			Name: fmt.Sprintf("bare-%d", i), VCPUs: 1, MemoryMiB: 300, Kernel: kernel, Initrd: initrd,
			Disks:    []vmm.Disk{{Path: entry.DiskPath, ReadOnly: true}, {Path: disk}},
			StateDir: filepath.Join(sd, "v"), ConsoleLog: filepath.Join(sd, "console.log"),
		}.WithDefaults())
		if err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		if err := m.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		ln, err := m.Host().Listen(channel.PortBootstrap)
		if err != nil {
			m.Kill()
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), vmTimeout)
		c, err := channel.Accept(ctx, ln)
		cancel()
		if err != nil {
			m.Kill()
			t.Fatalf("bare boot %d: %v", i, err)
		}
		out = append(out, time.Since(t0))
		if os.Getenv("OPENSHELL_BENCH_VERBOSE") == "1" {
			t.Logf("bare boot %d: %v; console:\n%s", i, time.Since(t0), state.Tail(filepath.Join(sd, "console.log"), 1500))
		}
		c.Write(doc)
		c.Close()
		ln.Close()
		m.Kill()
		m.Wait(context.Background())
	}
	return out
}

func printStats(t *testing.T, what string, ds []time.Duration) {
	t.Helper()
	if len(ds) == 0 {
		t.Errorf("%s: no samples", what)
		return
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	pct := func(p float64) time.Duration {
		i := int(float64(len(ds))*p+0.5) - 1
		return ds[max(0, min(i, len(ds)-1))]
	}
	t.Logf("BENCH %s: n=%d p50=%v p99=%v min=%v max=%v", what, len(ds), pct(0.50).Round(time.Millisecond), pct(0.99).Round(time.Millisecond), ds[0].Round(time.Millisecond), ds[len(ds)-1].Round(time.Millisecond))
}

// memLog collects the per-process breakdown of sessionMemory.
var memLog []string

// sessionMemory sums Rss and Pss (KiB) from /proc/<pid>/smaps_rollup over the runner's
// session (runner, QEMU, vsock backend).
func sessionMemory(sid int, start uint64) (rss, pss int64) {
	for _, pid := range procstat.SessionMembers(sid, start) {
		r, p := procMemory(pid)
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		memLog = append(memLog, fmt.Sprintf("%s RSS %d MiB PSS %d MiB", strings.TrimSpace(string(comm)), r>>10, p>>10))
		rss += r
		pss += p
	}
	return rss, pss
}

func procMemory(pid int) (rss, pss int64) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(fl[1], 10, 64)
		switch fl[0] {
		case "Rss:":
			rss += v
		case "Pss:":
			pss += v
		}
	}
	return rss, pss
}

// TestBenchExecBaseline is the baseline of the exec benchmark (scripts/bench.sh exec),
// with OPENSHELL_BENCH=1: a VM of the driver (same kernel, backend and vsock channel as
// a sandbox's) whose test guest serves ExecEchoPort; the host opens one vsock stream
// to it through the VM's vsock backend and times rounds of "one byte there, the guest
// runs /bin/true (busybox) and waits for it, one byte back". That is a bare vsock
// round trip plus a process start, the floor under `sandbox exec -- true`, which the
// e2e half (e2e TestBenchVMExec) measures through the CLI, the gateway and the guest's
// supervisor. It prints "BENCH vm-exec-baseline p50_us=… p99_us=…" for bench.sh.
func TestBenchExecBaseline(t *testing.T) {
	if os.Getenv("OPENSHELL_BENCH") != "1" {
		t.Skip("benchmark: set OPENSHELL_BENCH=1")
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatalf("the baseline runs busybox as /bin/true in the guest: %v (apt-get install busybox-static)", err)
	}
	image := busyboxTrueImage(t, busybox)
	gw := newGatewayStub(t)
	dir := shortDir(t)
	d := newTestDriver(t, testConfig(t, dir, gw.addr()))
	defer d.Close()

	id, name := drivertest.NewIDs()
	sb := drivertest.DefaultSandbox(id, name, image)
	sb.Spec.Command = []string{"exec-echo"}
	sb.Spec.Template.Resources = &computev1.DriverResourceRequirements{CpuLimit: "2", MemoryLimit: "512Mi"}
	if err := d.Create(t.Context(), sb); err != nil {
		t.Fatalf("Create: %v", err)
	}
	defer d.Delete(context.Background(), id, "")
	gw.next(t, id, vmTimeout) // the guest serves the port before it reports

	uds := filepath.Join(record(t, dir, id).Paths.VMMDir, "vsock.sock")
	if _, err := os.Stat(uds); err != nil {
		t.Fatalf("the VM's vsock backend socket: %v (the baseline needs the vhost-user-vsock transport)", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c, err := channel.NewHybridVsock(uds).Dial(ctx, testguestExecEchoPort)
	if err != nil {
		t.Fatalf("dial the guest's exec-echo port: %v", err)
	}
	defer c.Close()
	round := func() time.Duration {
		start := time.Now()
		b := []byte{'x'}
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		if b[0] != '0' {
			t.Fatalf("the guest's /bin/true answered %q, want '0' (exit status 0)", b)
		}
		return time.Since(start)
	}
	for range 5 {
		round()
	}
	const n = 100
	ds := make([]time.Duration, n)
	for i := range ds {
		ds[i] = round()
	}
	slices.Sort(ds)
	p50, p99 := ds[n/2], ds[n*99/100]
	t.Logf("vsock round trip + /bin/true in the guest (%d rounds): p50 %v p99 %v", n, p50, p99)
	fmt.Printf("BENCH vm-exec-baseline p50_us=%d p99_us=%d\n", p50.Microseconds(), p99.Microseconds())
}

// testguestExecEchoPort is the test guest's ExecEchoPort.
const testguestExecEchoPort = 7070

// busyboxTrueImage is an OCI layout image whose /bin/true is a static busybox.
func busyboxTrueImage(t *testing.T, busybox string) string {
	t.Helper()
	bin, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	layer := filepath.Join(tmp, "layer.tar")
	f, err := os.Create(layer)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	for _, d := range []string{"bin/", "etc/", "var/", "var/lib/", "proc/", "sys/", "dev/", "tmp/", "run/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: time.Unix(0, 0)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/true", Mode: 0o755, Size: int64(len(bin)), ModTime: time.Unix(0, 0)}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(bin); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	dir := filepath.Join(tmp, "image")
	if _, err := ocilayout.Write(dir, layer, ocilayout.Options{Tag: "true", Env: []string{"PATH=/bin"}, WorkingDir: "/"}); err != nil {
		t.Fatal(err)
	}
	return "oci-layout:" + dir + ":true"
}
