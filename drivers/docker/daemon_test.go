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

// privateDockerd is a dockerd of the test's own (network namespace, socket, data
// root, exec root), so the test can stop it without touching the shared one.
type privateDockerd struct {
	dir  string
	host string
	bin  string
	args []string
	cmd  *exec.Cmd
	done chan struct{}
}

func startPrivateDockerd(t *testing.T) *privateDockerd {
	t.Helper()
	testenv.RequireRoot(t)
	return startPrivateDockerdWith(t, testenv.RequireCommand(t, "dockerd", "run scripts/setup-docker.sh"))
}

// startPrivateDockerdWith starts the dockerd binary bin, with extra arguments after
// the private daemon's own, in its own network namespace.
func startPrivateDockerdWith(t *testing.T, bin string, extra ...string) *privateDockerd {
	t.Helper()
	dir, err := os.MkdirTemp("", "osdk-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) }) // runs last; cleanup() below checks the removal
	p := &privateDockerd{dir: dir, host: "unix://" + filepath.Join(dir, "docker.sock")}
	// In a network namespace of its own: nothing it does to bridges, veths or
	// iptables (dockerd deletes a "docker0" at start in some cases) can reach the host's
	// network, where the shared daemon lives. Its socket is a file, reachable from here.
	p.args = []string{"--net", "--", bin,
		"--host", p.host,
		"--data-root", filepath.Join(dir, "root"),
		"--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "docker.pid"),
		"--bridge", "none",
		"--iptables=false", "--ip-masq=false",
		// Addresses apart from the shared daemon's, for clarity in logs.
		"--default-address-pool", "base=10.213.0.0/16,size=24",
	}
	p.args = append(p.args, extra...)
	p.bin = testenv.RequireCommand(t, "unshare", "apt-get install util-linux")
	t.Cleanup(func() { p.stop(t); p.cleanup(t) })
	p.launch(t)
	return p
}

// launch starts the daemon (again) and waits until it answers.
func (p *privateDockerd) launch(t *testing.T) {
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(p.dir, "dockerd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(p.bin, p.args...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start private dockerd: %v", err)
	}
	done := make(chan struct{})
	p.done = done
	go func() { _ = p.cmd.Wait(); logf.Close(); close(done) }()

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
			return
		}
		select {
		case <-done:
			log, _ := os.ReadFile(filepath.Join(p.dir, "dockerd.log"))
			t.Fatalf("private dockerd exited: %s", tail(string(log), 20))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("private dockerd did not answer within 30s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop ends the daemon by its PID (SIGTERM, then SIGKILL) and waits for it.
func (p *privateDockerd) stop(t *testing.T) {
	if p.cmd == nil {
		return
	}
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

// cleanup removes what the daemon leaves behind: mounts under its dirs, the dirs.
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
	if err := os.RemoveAll(p.dir); err != nil {
		t.Errorf("remove private dockerd dir: %v", err)
	}
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

// The watch outlives a daemon restart: it reconnects, and its resync reports what
// happened meanwhile (the daemon's shutdown killed the sandbox: ERROR, not STOPPED).
// The sandbox keeps its identity and can be started again.
func TestWatchSurvivesDaemonRestart(t *testing.T) {
	requireDocker(t)
	p := startPrivateDockerd(t)
	build := exec.Command(filepath.Join(repoRoot(), "scripts/testimage/build.sh"), "busybox")
	build.Env = append(os.Environ(), "DOCKER_HOST="+p.host)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("import test image into the private daemon: %v: %s", err, out)
	}
	cfg := withStandin(testConfig(t))
	cfg.Host = p.host
	cfg.ResyncInterval = time.Hour // only the reconnect's resync may repair
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
	defer func() { _, _ = d.Delete(context.Background(), id, name) }()
	events, err := d.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitEvent := func(what string, pred func(*computev1.DriverSandbox) bool) {
		t.Helper()
		timeout := time.After(45 * time.Second)
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					t.Fatalf("watch closed while waiting for %s", what)
				}
				if s := ev.GetSandbox().GetSandbox(); s.GetId() == id && pred(s) {
					return
				}
			case <-timeout:
				t.Fatalf("no watch event for %s", what)
			}
		}
	}
	waitEvent("READY", func(s *computev1.DriverSandbox) bool { return phase(s) == openshellv1.SandboxPhase_SANDBOX_PHASE_READY })

	p.stop(t)
	p.launch(t)
	waitEvent("ERROR after the daemon restart", func(s *computev1.DriverSandbox) bool {
		return phase(s) == openshellv1.SandboxPhase_SANDBOX_PHASE_ERROR
	})
	if err := d.Start(ctx, id, name); err != nil {
		t.Fatalf("Start after the daemon restart: %v", err)
	}
	waitEvent("READY again", func(s *computev1.DriverSandbox) bool { return phase(s) == openshellv1.SandboxPhase_SANDBOX_PHASE_READY })
}
