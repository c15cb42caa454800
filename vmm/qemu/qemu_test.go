package qemu_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/openshell/openshell/images/bundle"
	"github.com/openshell/openshell/internal/testenv"
	"github.com/openshell/openshell/vmm"
	"github.com/openshell/openshell/vmm/channel"
	"github.com/openshell/openshell/vmm/qemu"
)

const bootTimeout = 60 * time.Second // TCG on two shared cores

// answer mirrors guest/internal/testinit.Answer.
type answer struct {
	Image       string `json:"image"`
	Prev        string `json:"prev"`
	Transport   string `json:"transport"`
	PID         int    `json:"pid"`
	Root        string `json:"root"`
	Share       string `json:"share"`
	RandomReady bool   `json:"random_ready"`
}

const echoPort = 1030

var (
	fixtureOnce sync.Once
	fixtureDir  string
	fixture     struct {
		kernel, initrd, image string
		err                   error
	}
)

// TestMain owns the shared fixture directory (init binary, initramfs, image disk).
func TestMain(m *testing.M) {
	d, err := os.MkdirTemp("", "openshell-vmm-test-")
	if err != nil {
		panic(err)
	}
	fixtureDir = d
	code := m.Run()
	_ = os.RemoveAll(d)
	os.Exit(code)
}

// requireVM returns the kernel, initramfs (testinit as /init) and a read-only image
// disk containing /etc/openshell-test-image.
func requireVM(tb testing.TB) (kernel, initrd, image string) {
	tb.Helper()
	testenv.RequireCommand(tb, "qemu-system-x86_64", "run scripts/setup-vm-host.sh")
	testenv.RequireCommand(tb, "mkfs.ext4", "run scripts/setup-vm-host.sh")
	_, kerr := bundle.FindKernel("")
	testenv.Require(tb, kerr == nil, fmt.Sprintf("guest kernel: %v", kerr))
	fixtureOnce.Do(func() {
		f := &fixture
		f.kernel, f.err = bundle.FindKernel("")
		if f.err != nil {
			return
		}
		mods, err := bundle.ModulesDir(f.kernel)
		if err != nil {
			f.err = err
			return
		}
		initBin := filepath.Join(fixtureDir, "testinit")
		cmd := exec.Command("go", "build", "-o", initBin, "github.com/openshell/openshell/guest/internal/testinit")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		if out, err := cmd.CombinedOutput(); err != nil {
			f.err = fmt.Errorf("build testinit: %v: %s", err, out)
			return
		}
		f.initrd, f.err = bundle.BuildInitramfs(context.Background(), initBin, mods, filepath.Join(fixtureDir, "cache"))
		if f.err != nil {
			return
		}
		root := filepath.Join(fixtureDir, "rootfs")
		if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
			f.err = err
			return
		}
		if err := os.WriteFile(filepath.Join(root, "etc", "openshell-test-image"), []byte("image-ok\n"), 0o644); err != nil {
			f.err = err
			return
		}
		f.image = filepath.Join(fixtureDir, "image.ext4")
		f.err = vmm.CreateImageDisk(context.Background(), f.image, root, 16<<20)
	})
	if fixture.err != nil {
		tb.Fatalf("vm fixture: %v", fixture.err)
	}
	return fixture.kernel, fixture.initrd, fixture.image
}

func shortStateDir(tb testing.TB) string {
	tb.Helper()
	d, err := os.MkdirTemp("", "osvm-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

func newMachine(tb testing.TB, cfg vmm.Config, opts ...qemu.Option) *qemu.Machine {
	tb.Helper()
	m, err := qemu.NewMachine(cfg, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		// Kill by PID (QEMU and its helpers) and wait so nothing outlives the test.
		_ = m.Kill()
		select {
		case <-m.Exited():
		case <-time.After(10 * time.Second):
			tb.Errorf("vm %s: QEMU pid %d did not exit after kill", cfg.Name, m.PID())
		}
	})
	return m
}

// bootAndAsk starts m, accepts the guest's answer on PortBootstrap, optionally
// checks host→guest dialing, says bye and waits for the guest to power off.
func bootAndAsk(t testing.TB, ctx context.Context, m *qemu.Machine, checkDial bool) answer {
	t.Helper()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	helpers := m.HelperPIDs()
	ln, err := m.Host().Listen(channel.PortBootstrap)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	actx, cancel := context.WithTimeout(ctx, bootTimeout)
	defer cancel()
	c, err := channel.Accept(actx, ln)
	if err != nil {
		t.Fatalf("no answer from guest within %s: %v\nconsole:\n%s", bootTimeout, err, m.ConsoleTail(4096))
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(bootTimeout))
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("read answer: %v\nconsole:\n%s", err, m.ConsoleTail(4096))
	}
	var a answer
	if err := json.Unmarshal([]byte(line), &a); err != nil {
		t.Fatalf("answer %q: %v", line, err)
	}
	if checkDial {
		dctx, dcancel := context.WithTimeout(ctx, 20*time.Second)
		ec, err := m.Host().Dial(dctx, echoPort)
		dcancel()
		if err != nil {
			t.Fatalf("host→guest dial: %v", err)
		}
		_ = ec.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.WriteString(ec, "ping\n"); err != nil {
			t.Fatal(err)
		}
		got, err := bufio.NewReader(ec).ReadString('\n')
		if err != nil || got != "ping\n" {
			t.Fatalf("echo over host→guest dial: %q, %v", got, err)
		}
		_ = ec.Close()
	}
	if _, err := io.WriteString(c, "bye\n"); err != nil {
		t.Fatal(err)
	}
	waitPowerOff(t, ctx, m)
	if st := m.State(); st != vmm.StateStopped {
		t.Fatalf("state after power off = %s, want stopped", st)
	}
	// Helper processes (vsock backend, virtiofsd) must be gone with the VM.
	for _, pid := range helpers {
		deadline := time.Now().Add(5 * time.Second)
		for syscall.Kill(pid, 0) == nil {
			if time.Now().After(deadline) {
				t.Fatalf("helper pid %d still alive after the VM exited", pid)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return a
}

// waitPowerOff waits for m's guest to power off cleanly (within bootTimeout).
func waitPowerOff(tb testing.TB, ctx context.Context, m *qemu.Machine) {
	tb.Helper()
	wctx, cancel := context.WithTimeout(ctx, bootTimeout)
	defer cancel()
	if err := m.Wait(wctx); err != nil {
		tb.Fatalf("guest did not power off cleanly: %v\nconsole:\n%s", err, m.ConsoleTail(4096))
	}
}

func baseConfig(tb testing.TB, name string, disks ...vmm.Disk) vmm.Config {
	kernel, initrd, _ := requireVM(tb)
	return vmm.Config{
		Name: name, VCPUs: 1, MemoryMiB: 256,
		Kernel: kernel, Initrd: initrd,
		Disks:    disks,
		StateDir: shortStateDir(tb),
	}
}

func writableDisk(tb testing.TB) string {
	tb.Helper()
	p := filepath.Join(shortStateDir(tb), "data.ext4")
	if err := vmm.CreateWritableDisk(p, 64<<20); err != nil {
		tb.Fatal(err)
	}
	return p
}

func TestBootAnswersOverChannel(t *testing.T) {
	_, _, image := requireVM(t)
	for _, tc := range []struct {
		transport, guestSees string
		q35                  bool
	}{
		{channel.TransportVhostUserVsock, "vsock", false},
		{channel.TransportVirtioSerial, "virtio-serial", false},
		{channel.TransportVhostUserVsock, "vsock", true},
		{channel.TransportVhostVsock, "vsock", false},
	} {
		name := tc.transport
		opts := []qemu.Option{qemu.WithTransport(tc.transport)}
		if tc.q35 {
			name += "-q35"
			opts = append(opts, qemu.WithQ35())
		}
		t.Run(name, func(t *testing.T) {
			if tc.transport == channel.TransportVhostVsock {
				// A host kernel capability, not something a setup script installs.
				if _, err := os.Stat("/dev/vhost-vsock"); err != nil {
					t.Skipf("host has no /dev/vhost-vsock (vhost_vsock module): %v", err)
				}
			}
			if tc.transport == channel.TransportVhostUserVsock {
				_, err := channel.FindVsockBackend()
				testenv.Require(t, err == nil, fmt.Sprint(err))
			}
			cfg := baseConfig(t, "answer-"+tc.transport,
				vmm.Disk{Path: image, ReadOnly: true}, vmm.Disk{Path: writableDisk(t)})
			m := newMachine(t, cfg, opts...)
			start := time.Now()
			a := bootAndAsk(t, t.Context(), m, true)
			t.Logf("boot→answer→poweroff in %s (accel %s, transport %s)", time.Since(start).Round(time.Millisecond), m.Accel().Name, m.Transport().Name)
			if a.Image != "image-ok" || a.Prev != "none" || a.Transport != tc.guestSees || a.PID != 1 || a.Root != "overlay" {
				t.Fatalf("answer %+v: want image-ok, prev none, transport %s, pid 1, overlay root", a, tc.guestSees)
			}
			if !a.RandomReady {
				// The emulated CPU's seed (RDRAND) lets the guest kernel ready its pool
				// at boot; without it the first token or TLS work waits ~1 s here.
				t.Fatalf("guest's random pool was not ready when its program ran (want a CPU seed: -cpu with rdrand)")
			}
			if m.Transport().Name != tc.transport {
				t.Fatalf("transport %q, want %q", m.Transport().Name, tc.transport)
			}
			// The guest kernel does not enforce module signatures: init loads the
			// modules without them (the check is most of a load's cost here).
			if c := m.ConsoleTail(1 << 16); !strings.Contains(c, "kernel modules loaded") || !strings.Contains(c, "signatures_checked=false") {
				t.Fatalf("console lacks init progress or loaded the modules with their signatures checked:\n%s", m.ConsoleTail(4096))
			}
		})
	}
}

// TestModulesLoadSignedWhenUnsignedRefused: a guest kernel locked down (integrity)
// refuses modules without a signature even though it does not enforce them by
// parameter; init then loads the signed files, and the VM still comes up on its disks.
func TestModulesLoadSignedWhenUnsignedRefused(t *testing.T) {
	_, _, image := requireVM(t)
	cfg := baseConfig(t, "lockdown", vmm.Disk{Path: image, ReadOnly: true}, vmm.Disk{Path: writableDisk(t)})
	cfg.Cmdline = "lockdown=integrity"
	m := newMachine(t, cfg)
	if a := bootAndAsk(t, t.Context(), m, false); a.Image != "image-ok" || a.Root != "overlay" {
		t.Fatalf("answer %+v: want image-ok on an overlay root", a)
	}
	c := m.ConsoleTail(1 << 16)
	if !strings.Contains(c, "signatures_checked=true") || strings.Contains(c, "module failed to load") {
		t.Fatalf("console: want the modules loaded with their signatures checked, none failed:\n%s", m.ConsoleTail(4096))
	}
}

func TestOverlaySurvivesReboot(t *testing.T) {
	_, _, image := requireVM(t)
	data := writableDisk(t)
	var prev []string
	for i, tok := range []string{"first-boot", "second-boot"} {
		cfg := baseConfig(t, fmt.Sprintf("persist-%d", i),
			vmm.Disk{Path: image, ReadOnly: true}, vmm.Disk{Path: data})
		cfg.Cmdline = "openshell_token=" + tok
		a := bootAndAsk(t, t.Context(), newMachine(t, cfg), false)
		prev = append(prev, a.Prev)
	}
	if prev[0] != "none" || prev[1] != "first-boot" {
		t.Fatalf("persisted values across boots = %v, want [none first-boot]", prev)
	}
}

func TestTwoGuestsShareImageDisk(t *testing.T) {
	_, _, image := requireVM(t)
	var wg sync.WaitGroup
	results := make([]answer, 2)
	errs := make(chan string, 2)
	for i := range 2 {
		cfg := baseConfig(t, fmt.Sprintf("share-%d", i),
			vmm.Disk{Path: image, ReadOnly: true}, vmm.Disk{Path: writableDisk(t)})
		cfg.Channel.CID = uint32(3 + i)
		m := newMachine(t, cfg)
		wg.Add(1)
		go func() {
			defer wg.Done()
			// bootAndAsk calls Fatal, which must run on the test goroutine: use a sub-T-free path.
			ft := &collectT{TB: t}
			func() {
				defer func() { _ = recover() }()
				results[i] = bootAndAsk(ft, t.Context(), m, false)
			}()
			if ft.failed != "" {
				errs <- ft.failed
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	for i, a := range results {
		if a.Image != "image-ok" {
			t.Fatalf("guest %d answer %+v", i, a)
		}
	}
}

// collectT lets bootAndAsk run off the test goroutine: Fatal records and unwinds.
type collectT struct {
	testing.TB
	mu     sync.Mutex
	failed string
}

func (c *collectT) Fatal(args ...any) { c.Fatalf("%s", fmt.Sprint(args...)) }
func (c *collectT) Fatalf(format string, args ...any) {
	c.mu.Lock()
	c.failed = fmt.Sprintf(format, args...)
	c.mu.Unlock()
	panic(c)
}

func TestMissingKernelIsClear(t *testing.T) {
	testenv.RequireCommand(t, "qemu-system-x86_64", "run scripts/setup-vm-host.sh")
	cfg := vmm.Config{Name: "nokernel", Kernel: filepath.Join(t.TempDir(), "no-vmlinux"), StateDir: shortStateDir(t)}
	m := newMachine(t, cfg, qemu.WithTransport(channel.TransportVirtioSerial))
	err := m.Start(t.Context())
	if err == nil || !strings.Contains(err.Error(), "kernel") || !strings.Contains(err.Error(), "setup-vm-host.sh") {
		t.Fatalf("Start with a missing kernel: %v", err)
	}
	if m.State() != vmm.StateCrashed || m.PID() != 0 {
		t.Fatalf("state %s pid %d after failed start", m.State(), m.PID())
	}
	if err := m.Wait(t.Context()); err == nil || !strings.Contains(err.Error(), "kernel") {
		t.Fatalf("Wait after a failed start = %v, want the start error", err)
	}
}

func TestQEMUExitAtStartShowsOutput(t *testing.T) {
	cfg := baseConfig(t, "badarg")
	transport := channel.TransportVhostUserVsock
	if _, err := channel.FindVsockBackend(); err != nil {
		transport = channel.TransportVirtioSerial
	}
	m := newMachine(t, cfg, qemu.WithTransport(transport), qemu.WithExtraArgs("-definitely-not-an-option"))
	err := m.Start(t.Context())
	if err == nil {
		t.Fatal("Start succeeded with a bad QEMU argument")
	}
	for _, want := range []string{"QEMU exited at start", "definitely-not-an-option", "console:"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error lacks %q:\n%v", want, err)
		}
	}
	if st := m.State(); st != vmm.StateCrashed {
		t.Fatalf("state %s, want crashed", st)
	}
	// The vsock backend started before QEMU must be gone too.
	for _, pid := range m.HelperPIDs() {
		t.Fatalf("helper pid %d still tracked after failed start", pid)
	}
}

func TestStopPowersDown(t *testing.T) {
	_, _, image := requireVM(t)
	cfg := baseConfig(t, "stop", vmm.Disk{Path: image, ReadOnly: true}, vmm.Disk{Path: writableDisk(t)})
	m := newMachine(t, cfg)
	if err := m.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	ln, err := m.Host().Listen(channel.PortBootstrap)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	actx, cancel := context.WithTimeout(t.Context(), bootTimeout)
	defer cancel()
	c, err := channel.Accept(actx, ln)
	if err != nil {
		t.Fatalf("guest did not come up: %v\n%s", err, m.ConsoleTail(4096))
	}
	defer c.Close()
	st, err := m.Status(t.Context())
	if err != nil || st != "running" {
		t.Fatalf("QMP status %q, %v", st, err)
	}
	sctx, scancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer scancel()
	start := time.Now()
	if err := m.Stop(sctx); err != nil {
		t.Fatal(err)
	}
	if st := m.State(); st != vmm.StateStopped {
		t.Fatalf("state after Stop = %s", st)
	}
	took := time.Since(start)
	t.Logf("Stop took %s", took.Round(time.Millisecond))
	// The guest handles the ACPI power button: Stop must not need the quit/kill fallback.
	if took > 15*time.Second {
		t.Fatalf("Stop took %s: the guest ignored the power button\n%s", took, m.ConsoleTail(4096))
	}
	if !strings.Contains(m.ConsoleTail(1<<16), "power button pressed") {
		t.Fatalf("console does not show the power button:\n%s", m.ConsoleTail(4096))
	}
}

func TestSharedDirOverVirtiofs(t *testing.T) {
	_, _, image := requireVM(t)
	_, err := os.Stat(qemu.VirtiofsdPath)
	testenv.Require(t, err == nil, qemu.VirtiofsdPath+" missing; run scripts/setup-vm-host.sh (qemu-system-common)")
	share := t.TempDir()
	if err := os.WriteFile(filepath.Join(share, "hello.txt"), []byte("from-host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := baseConfig(t, "share", vmm.Disk{Path: image, ReadOnly: true}, vmm.Disk{Path: writableDisk(t)})
	cfg.SharedDirs = []vmm.SharedDir{{Tag: "work", Path: share}}
	cfg.Cmdline = "openshell_share=work"
	m := newMachine(t, cfg)
	a := bootAndAsk(t, t.Context(), m, false)
	if a.Share != "from-host" {
		t.Fatalf("guest read %q from the shared dir, want from-host\n%s", a.Share, m.ConsoleTail(4096))
	}
	if len(m.HelperPIDs()) != 0 {
		t.Fatalf("helpers still tracked after exit: %v", m.HelperPIDs())
	}
}

func TestNoWritableDiskUsesTmpfs(t *testing.T) {
	_, _, image := requireVM(t)
	cfg := baseConfig(t, "nodata", vmm.Disk{Path: image, ReadOnly: true})
	m := newMachine(t, cfg)
	a := bootAndAsk(t, t.Context(), m, false)
	if a.Image != "image-ok" || a.Root != "overlay" {
		t.Fatalf("answer %+v", a)
	}
	if !strings.Contains(m.ConsoleTail(1<<16), "no writable disk") {
		t.Fatalf("console lacks the no-writable-disk warning:\n%s", m.ConsoleTail(4096))
	}
}
