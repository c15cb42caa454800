package vm_test

import (
	"archive/tar"
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/openshell/openshell/drivers/vm"
	"github.com/openshell/openshell/drivers/vm/internal/state"
	"github.com/openshell/openshell/drivers/vm/ocilayout"
	"github.com/openshell/openshell/internal/procstat"
	"github.com/openshell/openshell/internal/testenv/vmhost"
)

// envRunner marks a re-exec of the test binary as a VM runner.
const envRunner = "OPENSHELL_VM_TEST_RUNNER"

// TestMain lets the test binary double as the runner the driver re-executes
// (`<test binary> runner --state-dir DIR`), like the real driver binary does.
func TestMain(m *testing.M) {
	if os.Getenv(envRunner) == "1" && len(os.Args) > 1 && os.Args[1] == "runner" {
		log := slog.New(slog.NewTextHandler(os.Stderr, nil))
		if err := vm.RunnerMain(context.Background(), os.Args[2:], os.Stderr, log); err != nil {
			log.Error("runner failed", "err", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if sock := os.Getenv(envDial); sock != "" {
		os.Exit(dialChild(sock))
	}
	// A crash-helper child is SIGKILLed by its parent and never removes its own
	// fixture dir: it makes it inside the parent's GPU tree, which the parent removes.
	d, err := os.MkdirTemp(os.Getenv(envGPUCrash), "osvm-fx-")
	if err != nil {
		panic(err)
	}
	fixtureDir = d
	code := m.Run()
	os.RemoveAll(d)
	os.Exit(code)
}

var (
	fixtureDir  string
	fixtureOnce sync.Once
	fixture     struct {
		guest, image, driverBin string
		err                     error
	}
)

// vmFixture builds (once) the test guest init, a tiny OCI layout image and the
// driver binary. It skips (or fails under CI) without QEMU and a guest kernel.
func vmFixture(t testing.TB) (guestBin, imageRef string) {
	t.Helper()
	vmhost.Require(t)
	fixtureOnce.Do(func() {
		f := &fixture
		f.guest = filepath.Join(fixtureDir, "testguest")
		cmd := exec.Command("go", "build", "-o", f.guest, "github.com/openshell/openshell/drivers/vm/internal/testguest")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			f.err = fmt.Errorf("build testguest: %v: %s", err, out)
			return
		}
		f.driverBin = filepath.Join(fixtureDir, "openshell-driver-vm")
		cmd = exec.Command("go", "build", "-o", f.driverBin, "github.com/openshell/openshell/cmd/openshell-driver-vm")
		if out, err := cmd.CombinedOutput(); err != nil {
			f.err = fmt.Errorf("build openshell-driver-vm: %v: %s", err, out)
			return
		}
		layer := filepath.Join(fixtureDir, "layer.tar")
		if err := writeTinyRootfs(layer); err != nil {
			f.err = err
			return
		}
		dir := filepath.Join(fixtureDir, "image")
		if _, err := ocilayout.Write(dir, layer, ocilayout.Options{Tag: "test", Env: []string{"PATH=/bin", "IMAGE_ENV=1"}, WorkingDir: "/"}); err != nil {
			f.err = err
			return
		}
		f.image = "oci-layout:" + dir + ":test"
	})
	if fixture.err != nil {
		t.Fatalf("vm fixture: %v", fixture.err)
	}
	return fixture.guest, fixture.image
}

// writeTinyRootfs writes the root filesystem tar of the test image: the guest's init
// is the test binary from the initramfs, so the image only needs its mount points.
func writeTinyRootfs(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	for _, d := range []string{"etc/", "var/", "var/lib/", "proc/", "sys/", "dev/", "tmp/", "run/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
	}
	body := "openshell vm driver test image\n"
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/openshell-test-image", Mode: 0o644, Size: int64(len(body)), ModTime: time.Unix(0, 0)}); err != nil {
		return err
	}
	if _, err := tw.Write([]byte(body)); err != nil {
		return err
	}
	return tw.Close()
}

// shortDir is a temp dir with a short path (Unix sockets live inside); removed at the
// end after every process a driver left in it is killed.
func shortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "osvm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		killAll(t, d)
		os.RemoveAll(d)
	})
	return d
}

// killAll SIGKILLs every runner session (and recorded QEMU) under a driver state dir.
func killAll(t testing.TB, stateDir string) {
	ents, _ := os.ReadDir(filepath.Join(stateDir, "sb"))
	for _, e := range ents {
		rec, err := state.Load(filepath.Join(stateDir, "sb", e.Name()))
		if err != nil {
			continue
		}
		var pids []int
		if rec.RunnerPID != 0 {
			pids = procstat.SessionMembers(rec.RunnerPID, rec.RunnerStart)
		}
		if rec.VMMPID != 0 && state.SameProcess(rec.VMMPID, rec.VMMStart) {
			pids = append(pids, rec.VMMPID)
		}
		for _, p := range pids {
			t.Logf("cleanup: killing leftover pid %d of sandbox %s", p, rec.SandboxID)
			syscall.Kill(p, syscall.SIGKILL)
		}
	}
}

// gatewayStub stands in for the gateway's TCP listener: the runner bridges each guest
// gateway-port connection here, and the test guest sends one JSON report per connection.
type gatewayStub struct {
	ln       net.Listener
	accepted int // connections accepted (under mu)
	reports  chan report
	mu       sync.Mutex
	conns    map[string][]net.Conn // by sandbox id
}

// report mirrors drivers/vm/internal/testguest.Report.
type report struct {
	SandboxID string   `json:"sandbox_id"`
	Endpoint  string   `json:"endpoint"`
	HasToken  bool     `json:"has_token"`
	Command   []string `json:"command"`
	BootID    string   `json:"boot_id"`
	Prev      string   `json:"prev"`
	Conn      int      `json:"conn"`
}

func newGatewayStub(t testing.TB) *gatewayStub {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gatewayStub{ln: ln, reports: make(chan report, 64), conns: map[string][]net.Conn{}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			g.mu.Lock()
			g.accepted++
			g.mu.Unlock()
			go func() {
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					c.Close()
					return
				}
				var r report
				if err := json.Unmarshal([]byte(line), &r); err != nil {
					c.Close()
					return
				}
				g.mu.Lock()
				g.conns[r.SandboxID] = append(g.conns[r.SandboxID], c)
				g.mu.Unlock()
				select {
				case g.reports <- r:
				default:
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		g.mu.Lock()
		defer g.mu.Unlock()
		for _, cs := range g.conns {
			for _, c := range cs {
				c.Close()
			}
		}
	})
	return g
}

func (g *gatewayStub) addr() string { return g.ln.Addr().String() }

// next waits for the next report of sandbox id.
func (g *gatewayStub) next(t testing.TB, id string, timeout time.Duration) report {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case r := <-g.reports:
			if r.SandboxID == id {
				return r
			}
		case <-deadline:
			t.Fatalf("no gateway-port report from sandbox %s within %v", id, timeout)
		}
	}
}

// send writes a line to the newest gateway connection of sandbox id.
func (g *gatewayStub) send(t testing.TB, id, line string) {
	t.Helper()
	g.mu.Lock()
	cs := g.conns[id]
	g.mu.Unlock()
	if len(cs) == 0 {
		t.Fatalf("no gateway connection from %s", id)
	}
	if _, err := fmt.Fprintln(cs[len(cs)-1], line); err != nil {
		t.Fatalf("send %q to %s: %v", line, id, err)
	}
}

// testConfig is a driver config for small test VMs.
func testConfig(t testing.TB, stateDir, gatewayAddr string) vm.Config {
	guestBin, image := vmFixture(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return vm.Config{
		StateDir:         stateDir,
		GatewayEndpoint:  gatewayAddr,
		DefaultImage:     image,
		CPUs:             1,
		MemoryMiB:        256,
		DiskSize:         "64Mi",
		StopTimeout:      20 * time.Second,
		SupervisorBinary: guestBin,
		ImageCacheDir:    filepath.Join(fixtureDir, "images"),
		RunnerCommand:    []string{exe, "runner"},
		RunnerEnv:        []string{envRunner + "=1"},
	}
}

func newTestDriver(t testing.TB, cfg vm.Config) *vm.Driver {
	t.Helper()
	d, err := vm.New(cfg, slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if err != nil {
		t.Fatalf("vm.New: %v", err)
	}
	return d
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
