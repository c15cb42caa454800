package podman

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/internal/testenv"
)

// service is a `podman system service` a test starts on its own socket.
type service struct {
	socket string
	cmd    *exec.Cmd
}

// startService runs bin as a rootful service on a fresh socket (extra args go before
// `system service`) and stops it, by its pid, at cleanup.
func startService(t *testing.T, bin string, env []string, extra ...string) *service {
	t.Helper()
	dir, err := os.MkdirTemp("", "pm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &service{socket: filepath.Join(dir, "p.sock")}
	s.start(t, bin, env, extra...)
	t.Cleanup(s.stop) // the current process, also after a restart
	return s
}

func (s *service) start(t *testing.T, bin string, env []string, extra ...string) {
	t.Helper()
	args := append(append([]string{}, extra...), "system", "service", "--time=0", "unix://"+s.socket)
	s.cmd = exec.Command(bin, args...)
	s.cmd.Env = append(os.Environ(), env...)
	s.cmd.Env = append(s.cmd.Env, "PODMAN_IGNORE_CGROUPSV1_WARNING=1")
	log, _ := os.Create(filepath.Join(filepath.Dir(s.socket), "service.log"))
	s.cmd.Stdout, s.cmd.Stderr = log, log
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !answersAny(s.socket) {
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(filepath.Join(filepath.Dir(s.socket), "service.log"))
			t.Fatalf("%s service did not answer on %s within 30 s:\n%s", bin, s.socket, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *service) stop() { stopCmd(s.cmd) }

func stopCmd(cmd *exec.Cmd) {
	if cmd.ProcessState != nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

func answersAny(socket string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := newClient(socket).ping(ctx)
	return err == nil
}

func setupEnv(key string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	out, _ := exec.Command(filepath.Join(repoRoot(), "scripts/setup-podman.sh"), "env").Output()
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(l, key+"="); ok {
			return v
		}
	}
	return ""
}

// A real Podman 4.3 service (Debian's, unpacked by scripts/setup-podman.sh) is
// refused, naming its version and the fix; so is a Docker daemon's socket.
func TestRefusesOldPodmanAndDocker(t *testing.T) {
	md := modes()[0]
	requirePodman(t, md)
	bin := setupEnv("OPENSHELL_PODMAN4_BIN")
	_, err := os.Stat(bin)
	testenv.Require(t, err == nil, "Debian's podman 4 is not unpacked ("+bin+"); run scripts/setup-podman.sh podman4")
	// Short paths: Podman 4 refuses a runroot longer than 50 characters.
	store, err := os.MkdirTemp("", "p4")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(store) })
	svc := startService(t, bin, []string{"CONTAINERS_CONF=" + setupEnv("OPENSHELL_PODMAN_CONF")},
		"--root", filepath.Join(store, "root"), "--runroot", filepath.Join(store, "run"), "--storage-driver", "vfs")
	cfg := testConfig(t, md)
	cfg.Socket = svc.socket
	_, err = New(t.Context(), cfg)
	if !errors.Is(err, drivers.ErrFailedPrecondition) || !strings.Contains(err.Error(), "podman 4.3.1 is too old") || !strings.Contains(err.Error(), "Podman 5.0 or newer") {
		t.Fatalf("New against Podman 4.3.1 = %v; want a failed precondition naming 4.3.1 and the 5.0 minimum", err)
	}

	if answersAny("/var/run/docker.sock") {
		cfg.Socket = "/var/run/docker.sock"
		_, err = New(t.Context(), cfg)
		if !errors.Is(err, drivers.ErrFailedPrecondition) || !strings.Contains(err.Error(), "not a Podman service") {
			t.Fatalf("New against dockerd = %v; want it named as not Podman", err)
		}
	}

	cfg.Socket = filepath.Join(t.TempDir(), "none.sock")
	_, err = New(t.Context(), cfg)
	if !errors.Is(err, drivers.ErrUnavailable) || !strings.Contains(err.Error(), "setup-podman.sh") {
		t.Fatalf("New against no service = %v; want unavailable with the fix", err)
	}
}

// On a cgroups v1 host the driver refuses to start without the documented switch.
func TestCgroupsV1NeedsSwitch(t *testing.T) {
	md := modes()[0]
	requirePodman(t, md)
	in, err := newClient(md.socket).info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvAllowCgroupsV1, "0")
	cfg := testConfig(t, md)
	d, err := New(t.Context(), cfg)
	if in.Host.CgroupVersion != "v1" {
		if err != nil {
			t.Fatalf("cgroups %s host: New = %v", in.Host.CgroupVersion, err)
		}
		d.Close()
		t.Skip("cgroups v2 host: nothing to refuse")
	}
	if !errors.Is(err, drivers.ErrFailedPrecondition) || !strings.Contains(err.Error(), "allow_cgroups_v1") || !strings.Contains(err.Error(), EnvAllowCgroupsV1) {
		t.Fatalf("New on cgroups v1 without the switch = %v; want a refusal naming allow_cgroups_v1", err)
	}
	cfg.AllowCgroupsV1 = true
	d, err = New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("New with allow_cgroups_v1: %v", err)
	}
	d.Close()
}

func TestUnknownImageAndNameInUse(t *testing.T) {
	for _, md := range modes() {
		t.Run(md.name, func(t *testing.T) {
			requirePodman(t, md)
			cfg := testConfig(t, md)
			d := newTestDriver(t, cfg)
			ctx := t.Context()

			id, name := drivertest.NewIDs()
			sb := drivertest.DefaultSandbox(id, name, "openshell-test/no-such-image:latest")
			for what, err := range map[string]error{"ValidateCreate": d.ValidateCreate(ctx, sb), "Create": d.Create(ctx, sb)} {
				if !errors.Is(err, drivers.ErrInvalidArgument) || !strings.Contains(err.Error(), "not in Podman's local store") || !strings.Contains(err.Error(), "podman pull") {
					t.Errorf("%s with an unknown image = %v; want invalid argument naming the image and the fix", what, err)
				}
			}
			if _, err := os.Stat(d.stateDir(id)); !os.IsNotExist(err) {
				t.Errorf("state dir of the refused sandbox exists: %v", err)
			}

			// A container the driver did not make holds the name.
			id2, name2 := drivertest.NewIDs()
			podmanCLI(t, md, "create", "--name", containerName(name2), testImage, "true")
			t.Cleanup(func() {
				_, _ = execCommand(podmanBin(), "--remote", "--url", "unix://"+md.socket, "rm", "-f", containerName(name2))
			})
			err := d.Create(ctx, drivertest.DefaultSandbox(id2, name2, testImage))
			if !errors.Is(err, drivers.ErrAlreadyExists) || !strings.Contains(err.Error(), "already in use") {
				t.Fatalf("Create with a taken name = %v; want already exists naming the name", err)
			}
			if _, err := os.Stat(d.stateDir(id2)); !os.IsNotExist(err) {
				t.Errorf("state dir of the refused sandbox exists: %v", err)
			}
			if _, err := d.Get(ctx, id2, ""); !errors.Is(err, drivers.ErrNotFound) {
				t.Errorf("Get of the refused sandbox = %v; want not found", err)
			}
			if _, err := d.Get(ctx, "", name2); !errors.Is(err, drivers.ErrNotFound) {
				t.Errorf("Get by name of the foreign container = %v; want not found (not ours)", err)
			}
			if got := podmanCLI(t, md, "inspect", "-f", "{{.State.Status}}", containerName(name2)); got != "created" {
				t.Errorf("the foreign container was touched: %q", got)
			}
		})
	}
}

// The service stops between calls: errors say so and how to fix it, nothing is half
// made, and once it is back the driver finds its sandboxes again.
func TestServiceStoppedMidway(t *testing.T) {
	md := modes()[0]
	requirePodman(t, md)
	bin := podmanBin()
	env := []string{"CONTAINERS_CONF=" + setupEnv("OPENSHELL_PODMAN_CONF")}
	svc := startService(t, bin, env)
	cfg := testConfig(t, md)
	cfg.Socket = svc.socket
	d := newTestDriver(t, cfg)
	ctx := t.Context()

	idA, nameA := drivertest.NewIDs()
	createReady(ctx, t, d, drivertest.DefaultSandbox(idA, nameA, testImage))
	events, err := d.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}

	svc.stop()
	idB, nameB := drivertest.NewIDs()
	err = d.Create(ctx, drivertest.DefaultSandbox(idB, nameB, testImage))
	if !errors.Is(err, drivers.ErrUnavailable) || !strings.Contains(err.Error(), svc.socket) || !strings.Contains(err.Error(), "podman system service") {
		t.Fatalf("Create with the service stopped = %v; want unavailable naming the socket and the fix", err)
	}
	if _, err := d.Get(ctx, idA, ""); !errors.Is(err, drivers.ErrUnavailable) {
		t.Fatalf("Get with the service stopped = %v; want unavailable", err)
	}
	if _, err := os.Stat(d.stateDir(idB)); !os.IsNotExist(err) {
		t.Errorf("state dir of the failed create exists: %v", err)
	}

	svc.start(t, bin, env)
	got, err := d.Get(ctx, idA, "")
	if err != nil || phase(got).String() != "SANDBOX_PHASE_READY" {
		t.Fatalf("Get after the service came back = %v, %v; want READY (the container outlives the service)", got.GetStatus(), err)
	}
	list, err := d.List(ctx)
	if err != nil || len(list) != 1 || list[0].GetId() != idA {
		t.Fatalf("List after the service came back = %d sandboxes, %v; want only %s", len(list), err, idA)
	}
	if _, err := d.Get(ctx, idB, ""); !errors.Is(err, drivers.ErrNotFound) {
		t.Fatalf("the failed create left a sandbox: %v", err)
	}
	// The watch outlived the service's restart: a stop now shows up on it.
	if err := d.Stop(ctx, idA, ""); err != nil {
		t.Fatalf("Stop after the service came back: %v", err)
	}
	deadline := time.After(30 * time.Second)
	for stopped := false; !stopped; {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatal("the watch ended when the service restarted")
			}
			sb := ev.GetSandbox().GetSandbox()
			stopped = sb.GetId() == idA && drivers.StopConfirmed(sb.GetStatus())
		case <-deadline:
			t.Fatal("no stopped observation on the watch within 30 s of the service's restart")
		}
	}
	if deleted, err := d.Delete(ctx, idA, ""); !deleted || err != nil {
		t.Fatalf("Delete after the service came back = %v, %v", deleted, err)
	}
}

func execCommand(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}
