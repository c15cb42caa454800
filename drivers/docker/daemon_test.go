package docker

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/internal/testenv"
)

// privateDockerd is a dockerd of the test's own (socket, data root, exec root,
// address pool, no iptables), so the test can stop it without touching the shared one.
type privateDockerd struct {
	dir    string
	host   string
	bridge string // the private daemon's default bridge, created and deleted by the test
	cmd    *exec.Cmd
	done   chan struct{}
}

func startPrivateDockerd(t *testing.T) *privateDockerd {
	t.Helper()
	testenv.RequireRoot(t)
	bin := testenv.RequireCommand(t, "dockerd", "run scripts/setup-docker.sh")
	dir, err := os.MkdirTemp("", "osdk-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) }) // runs last; cleanup() below checks the removal
	p := &privateDockerd{dir: dir, host: "unix://" + filepath.Join(dir, "docker.sock"), done: make(chan struct{}),
		bridge: "osdk" + randHex(4)}
	// Its own default bridge: with --bridge=none dockerd deletes docker0, which the
	// shared daemon uses, and without --bridge it would take docker0 over.
	if out, err := exec.Command("ip", "link", "add", p.bridge, "type", "bridge").CombinedOutput(); err != nil {
		t.Fatalf("create bridge %s: %v: %s", p.bridge, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "link", "delete", p.bridge).Run() })
	if out, err := exec.Command("ip", "addr", "add", "10.214.0.1/24", "dev", p.bridge).CombinedOutput(); err != nil {
		_ = exec.Command("ip", "link", "delete", p.bridge).Run()
		t.Fatalf("address bridge %s: %v: %s", p.bridge, err, out)
	}
	logf, err := os.Create(filepath.Join(dir, "dockerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(bin,
		"--host", p.host,
		"--data-root", filepath.Join(dir, "root"),
		"--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "docker.pid"),
		"--bridge", p.bridge,
		"--iptables=false", "--ip-masq=false",
		// Subnets apart from the shared daemon's, so the two bridges never overlap.
		"--default-address-pool", "base=10.213.0.0/16,size=24",
	)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start private dockerd: %v", err)
	}
	go func() { _ = p.cmd.Wait(); logf.Close(); close(p.done) }()
	t.Cleanup(func() { p.stop(t); p.cleanup(t) })

	cli, err := client.New(client.WithHost(p.host))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		_, err := cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true})
		cancel()
		if err == nil {
			break
		}
		select {
		case <-p.done:
			log, _ := os.ReadFile(filepath.Join(dir, "dockerd.log"))
			t.Fatalf("private dockerd exited: %s", tail(string(log), 20))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("private dockerd did not answer within 30s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return p
}

// stop ends the daemon by its PID (SIGTERM, then SIGKILL) and waits for it.
func (p *privateDockerd) stop(t *testing.T) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Errorf("private dockerd ignored SIGTERM; killing pid %d", p.cmd.Process.Pid)
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// cleanup removes what the daemon leaves behind: mounts under its dirs, the bridges
// of its networks, the dirs.
func (p *privateDockerd) cleanup(t *testing.T) {
	if f, err := os.Open("/proc/self/mountinfo"); err == nil {
		var mounts []string
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) > 4 && strings.HasPrefix(fields[4], p.dir+"/") {
				mounts = append(mounts, fields[4])
			}
		}
		f.Close()
		for i := len(mounts) - 1; i >= 0; i-- {
			_ = syscall.Unmount(mounts[i], syscall.MNT_DETACH)
		}
	}
	// Its network bridges (br-<id>) stay behind; they carry its pool's addresses.
	_ = exec.Command("ip", "link", "delete", p.bridge).Run()
	if out, err := exec.Command("ip", "-o", "link", "show", "type", "bridge").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			name := strings.TrimSuffix(f[1], ":")
			if name == p.bridge || (strings.HasPrefix(name, "br-") && bridgeOfPrivate(name)) {
				_ = exec.Command("ip", "link", "delete", name).Run()
			}
		}
	}
	if err := os.RemoveAll(p.dir); err != nil {
		t.Errorf("remove private dockerd dir: %v", err)
	}
}

// bridgeOfPrivate reports whether a bridge carries an address of the private
// daemon's pool (10.213.0.0/16).
func bridgeOfPrivate(name string) bool {
	out, err := exec.Command("ip", "-o", "-4", "addr", "show", "dev", name).Output()
	return err == nil && strings.Contains(string(out), " 10.213.")
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// A daemon that goes away mid-way turns every call into a clear ErrUnavailable; a
// daemon that is not there makes New fail the same way.
func TestDaemonStoppedMidway(t *testing.T) {
	requireDocker(t)
	p := startPrivateDockerd(t)
	build := exec.Command(filepath.Join(repoRoot(), "scripts/testimage/build.sh"), "busybox")
	build.Env = append(os.Environ(), "DOCKER_HOST="+p.host)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("import test image into the private daemon: %v: %s", err, out)
	}

	cfg := testConfig(t)
	cfg.Host = p.host
	d, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer d.Close()
	ctx := t.Context()
	id, name := drivertest.NewIDs()
	if err := d.Create(ctx, drivertest.DefaultSandbox(id, name, testImage)); err != nil {
		t.Fatalf("Create: %v", err)
	}
	waitFor(t, d, id, "READY", func(s *computev1.DriverSandbox) bool { return phase(s) == openshellv1.SandboxPhase_SANDBOX_PHASE_READY })
	events, err := d.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}

	p.stop(t)

	sock := strings.TrimPrefix(p.host, "unix://")
	checkErr := func(op string, err error) {
		t.Helper()
		if !errors.Is(err, drivers.ErrUnavailable) {
			t.Errorf("%s with the daemon stopped = %v, want ErrUnavailable", op, err)
			return
		}
		for _, w := range []string{sock, "setup-docker.sh"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s error %q does not mention %q", op, err, w)
			}
		}
	}
	_, err = d.Get(ctx, id, name)
	checkErr("Get", err)
	_, err = d.List(ctx)
	checkErr("List", err)
	checkErr("Create", d.Create(ctx, drivertest.DefaultSandbox(id+"x", name+"x", testImage)))
	checkErr("Stop", d.Stop(ctx, id, name))
	_, err = d.Delete(ctx, id, name)
	checkErr("Delete", err)
	// The watch keeps trying (a daemon outage does not close it).
	deadline := time.After(2 * time.Second)
drain:
	for {
		select {
		case _, ok := <-events:
			if !ok {
				t.Errorf("Watch channel closed when the daemon went away")
				break drain
			}
		case <-deadline:
			break drain
		}
	}
	_, err = New(ctx, cfg)
	checkErr("New", err)
}
