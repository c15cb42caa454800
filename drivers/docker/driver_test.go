package docker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/gateway/pki"
)

func TestConformance(t *testing.T) {
	requireDocker(t)
	cfg := testConfig(t)
	t.Cleanup(func() { checkNoLeaks(t, cfg) })
	drivertest.Suite(t, func(t *testing.T) drivers.Driver {
		d, err := New(t.Context(), cfg)
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		return d
	}, drivertest.Options{Image: testImage, ReadyTimeout: readyTimeout})
}

// readyTimeout bounds how long a test waits for a sandbox to change state.
const readyTimeout = 30 * time.Second

// createReady creates sb, deletes it at cleanup, and waits until it is READY.
func createReady(ctx context.Context, t *testing.T, d *Driver, sb *computev1.DriverSandbox) *computev1.DriverSandbox {
	t.Helper()
	return drivertest.CreateReady(ctx, t, d, sb, readyTimeout)
}

// waitFor polls Get until pred holds.
func waitFor(t *testing.T, d *Driver, id string, what string, pred func(*computev1.DriverSandbox) bool) *computev1.DriverSandbox {
	t.Helper()
	return drivertest.WaitFor(t, d, id, what, readyTimeout, pred)
}

func phase(sb *computev1.DriverSandbox) openshellv1.SandboxPhase {
	return drivers.BackendPhase(sb.GetStatus())
}

func TestCreateContainerShape(t *testing.T) {
	requireDocker(t)
	cfg := testConfig(t)
	ca, err := pki.Ensure(t.TempDir(), nil) // the gateway's own CA, as handed to supervisors
	if err != nil {
		t.Fatal(err)
	}
	cfg.CAPEM = ca.CAPEM
	d := newTestDriver(t, cfg)
	ctx := t.Context()

	id, name := drivertest.NewIDs()
	sb := drivertest.DefaultSandbox(id, name, testImage)
	sb.Workspace = "ws1"
	sb.Spec.Environment = map[string]string{"FOO": "bar"}
	sb.Spec.Template.Resources = &computev1.DriverResourceRequirements{CpuLimit: "500m", MemoryLimit: "128Mi", MemoryRequest: "96Mi"}
	sb.Spec.Template.PlatformConfig, _ = structpb.NewStruct(map[string]any{"runtime_class_name": "runc"})
	got := createReady(ctx, t, d, sb)
	if got.GetWorkspace() != "ws1" || got.GetStatus().GetInstanceId() == "" {
		t.Errorf("observation workspace/instance = %q/%q", got.GetWorkspace(), got.GetStatus().GetInstanceId())
	}

	cli := d.cli
	ins, err := cli.ContainerInspect(ctx, containerName(name), client.ContainerInspectOptions{})
	if err != nil {
		t.Fatalf("inspect: %v", err)
	}
	c := ins.Container
	img, err := cli.ImageInspect(ctx, testImage)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		what      string
		got, want any
	}{
		{"image pinned to id", c.Image, img.ID},
		{"config image", c.Config.Image, img.ID},
		{"entrypoint", strings.Join(c.Config.Entrypoint, " "), SupervisorPath},
		{"user", c.Config.User, "0:0"},
		{"label managed-by", c.Config.Labels[LabelManagedBy], ManagedByValue},
		{"label sandbox-id", c.Config.Labels[LabelSandboxID], id},
		{"label sandbox-name", c.Config.Labels[LabelSandboxName], name},
		{"user label", c.Config.Labels["openshell.test/suite"], "drivertest"},
		{"runtime", c.HostConfig.Runtime, "runc"},
		{"restart policy", string(c.HostConfig.RestartPolicy.Name), "no"},
		{"nano cpus", c.HostConfig.NanoCPUs, int64(500_000_000)},
		{"memory", c.HostConfig.Memory, int64(128 << 20)},
		{"memory reservation", c.HostConfig.MemoryReservation, int64(96 << 20)},
		{"memory+swap", c.HostConfig.MemorySwap, int64(128 << 20)},
		{"pids limit", *c.HostConfig.PidsLimit, int64(DefaultPidsLimit)},
		{"cap drop", strings.Join(c.HostConfig.CapDrop, ","), "ALL"},
		{"network", string(c.HostConfig.NetworkMode), cfg.Network},
		{"extra hosts", strings.Join(c.HostConfig.ExtraHosts, ","), GatewayHost + ":" + d.GatewayIP()},
	}
	for _, ck := range checks {
		if fmt.Sprint(ck.got) != fmt.Sprint(ck.want) {
			t.Errorf("%s = %v, want %v", ck.what, ck.got, ck.want)
		}
	}
	for _, capName := range supervisorCaps {
		if !slices.Contains(c.HostConfig.CapAdd, capName) && !slices.Contains(c.HostConfig.CapAdd, "CAP_"+capName) {
			t.Errorf("cap add %v lacks %s", c.HostConfig.CapAdd, capName)
		}
	}
	for _, m := range c.Mounts {
		if m.RW {
			t.Errorf("mount %s → %s is writable, want read-only", m.Source, m.Destination)
		}
	}
	if len(c.Mounts) != 2 {
		t.Errorf("mounts = %+v, want the supervisor and the bootstrap dir", c.Mounts)
	}
	for _, e := range c.Config.Env {
		if strings.Contains(e, drivertest.SuiteToken) {
			t.Errorf("the token is in the container environment: %s", e)
		}
	}

	if !realSup { // these read what the stand-in reports; the real one hides the mount
		checkStandinHandoff(t, d, c.ID, id)
	}

	if deleted, err := d.Delete(ctx, id, name); err != nil || !deleted {
		t.Fatalf("Delete = %v, %v", deleted, err)
	}
	if _, err := os.Stat(d.stateDir(id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state dir remains after Delete: %v", err)
	}
}

func checkStandinHandoff(t *testing.T, d *Driver, cid, id string) {
	t.Helper()
	ctx := t.Context()
	// The supervisor (stand-in) saw the hand-off: ran as root, image user/workdir, token.
	logs := d.lastLogs(ctx, cid)
	for _, want := range []string{"sandbox=" + id, "uid=0", `image_user="sandbox"`, `image_workdir="/sandbox"`,
		fmt.Sprintf("token_len=%d", len(drivertest.SuiteToken)), `ca="` + BootstrapDir + `/ca.pem"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("supervisor log lacks %q:\n%s", want, logs)
		}
	}
	// Token 0600, CA 0644 on the host and in the container; the mount is read-only.
	st, err := os.Stat(filepath.Join(d.stateDir(id), "token"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("host token file: %v, %v; want mode 0600", st, err)
	}
	if got := strings.Fields(dockerCLI(t, "exec", cid, "stat", "-c", "%a", BootstrapDir+"/token", BootstrapDir+"/ca.pem")); strings.Join(got, " ") != "600 644" {
		t.Errorf("modes in container = %q, want 600 644", got)
	}
	if out, err := execIn(cid, "sh", "-c", "echo x > "+BootstrapDir+"/token"); err == nil {
		t.Errorf("writing the token in the container succeeded, want read-only: %s", out)
	}
}

func execIn(id string, args ...string) (string, error) {
	out, err := execCommand("docker", append([]string{"exec", id}, args...)...)
	return out, err
}

func TestBadInput(t *testing.T) {
	requireDocker(t)
	cfg := testConfig(t)
	d := newTestDriver(t, cfg)
	ctx := t.Context()

	id, name := drivertest.NewIDs()
	for _, tc := range []struct {
		what  string
		edit  func(sb *computev1.DriverSandbox)
		want  error
		words []string
	}{
		{"unknown image", func(sb *computev1.DriverSandbox) { sb.Spec.Template.Image = "openshell-test/nope:missing" },
			drivers.ErrInvalidArgument, []string{"openshell-test/nope:missing", "pull", "build"}},
		{"memory below minimum", func(sb *computev1.DriverSandbox) {
			sb.Spec.Template.Resources = &computev1.DriverResourceRequirements{MemoryLimit: "32Mi"}
		}, drivers.ErrInvalidArgument, []string{"memory", "32Mi", "64 MiB"}},
		{"bad cpu quantity", func(sb *computev1.DriverSandbox) {
			sb.Spec.Template.Resources = &computev1.DriverResourceRequirements{CpuLimit: "two"}
		}, drivers.ErrInvalidArgument, []string{"cpu", "two"}},
		{"reserved label", func(sb *computev1.DriverSandbox) { sb.Spec.Template.Labels = map[string]string{LabelSandboxID: "x"} },
			drivers.ErrInvalidArgument, []string{"reserved"}},
		{"unknown runtime class", func(sb *computev1.DriverSandbox) {
			sb.Spec.Template.PlatformConfig, _ = structpb.NewStruct(map[string]any{"runtime_class_name": "no-such-runtime"})
		}, drivers.ErrInvalidArgument, []string{"no-such-runtime", "runc"}},
		{"gpu without CDI", func(sb *computev1.DriverSandbox) {
			sb.Spec.ResourceRequirements = &computev1.ResourceRequirements{Gpu: &computev1.GpuResourceRequirements{}}
		}, drivers.ErrFailedPrecondition, []string{"GPU", "CDI"}},
	} {
		t.Run(tc.what, func(t *testing.T) {
			if tc.what == "gpu without CDI" && len(d.cdiDirs) > 0 {
				t.Skip("this daemon has CDI spec dirs")
			}
			sb := drivertest.DefaultSandbox(id, name, testImage)
			tc.edit(sb)
			for _, op := range []string{"ValidateCreate", "Create"} {
				var err error
				if op == "Create" {
					err = d.Create(ctx, sb)
				} else {
					err = d.ValidateCreate(ctx, sb)
				}
				if !errors.Is(err, tc.want) {
					t.Fatalf("%s = %v, want %v", op, err, tc.want)
				}
				for _, w := range tc.words {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("%s error %q does not mention %q", op, err, w)
					}
				}
			}
		})
	}
	if _, err := d.Get(ctx, id, name); !errors.Is(err, drivers.ErrNotFound) {
		t.Errorf("a rejected create left a sandbox behind: %v", err)
	}

	t.Run("name in use", func(t *testing.T) {
		id1, name := drivertest.NewIDs()
		id2, _ := drivertest.NewIDs()
		if err := d.Create(ctx, drivertest.DefaultSandbox(id1, name, testImage)); err != nil {
			t.Fatalf("Create: %v", err)
		}
		t.Cleanup(func() { _, _ = d.Delete(context.Background(), id1, name) })
		err := d.Create(ctx, drivertest.DefaultSandbox(id2, name, testImage))
		if !errors.Is(err, drivers.ErrAlreadyExists) || !strings.Contains(err.Error(), name) {
			t.Fatalf("Create with a name in use = %v, want ErrAlreadyExists naming %s", err, name)
		}
		if _, err := os.Stat(d.stateDir(id2)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the failed create left state files: %v", err)
		}
		if got, err := d.Get(ctx, id1, ""); err != nil || phase(got) == openshellv1.SandboxPhase_SANDBOX_PHASE_UNKNOWN {
			t.Errorf("the first sandbox suffered: %v, %v", got, err)
		}
	})

	t.Run("unknown sandbox", func(t *testing.T) {
		for _, op := range []func() error{
			func() error { return d.Stop(ctx, "no-such-id", "") },
			func() error { return d.Start(ctx, "no-such-id", "") },
		} {
			if err := op(); !errors.Is(err, drivers.ErrNotFound) {
				t.Errorf("Stop/Start(unknown) = %v, want ErrNotFound", err)
			}
		}
	})
}

func TestConfigValidate(t *testing.T) {
	good := Config{SupervisorBinary: "/bin/sh", GatewayEndpoint: "https://host.openshell.internal:17670", StateDir: "/tmp/x"}.withDefaults()
	if err := good.Validate(); err != nil {
		t.Fatalf("good config: %v", err)
	}
	for _, tc := range []struct {
		field string
		edit  func(c *Config)
	}{
		{"supervisor_binary", func(c *Config) { c.SupervisorBinary = "" }},
		{"supervisor_binary", func(c *Config) { c.SupervisorBinary = "/no/such/binary" }},
		{"supervisor_binary", func(c *Config) { c.SupervisorBinary = "relative/path" }},
		{"gateway_endpoint", func(c *Config) { c.GatewayEndpoint = "" }},
		{"gateway_endpoint", func(c *Config) { c.GatewayEndpoint = "grpc://x" }},
		{"gateway_port", func(c *Config) { c.GatewayPort = 70000 }},
		{"state_dir", func(c *Config) { c.StateDir = "rel" }},
		{"host", func(c *Config) { c.Host = "/var/run/docker.sock" }},
		{"default_memory", func(c *Config) { c.DefaultMemory = "1Mi" }},
		{"default_cpu", func(c *Config) { c.DefaultCPU = "lots" }},
		{"labels", func(c *Config) { c.Labels = map[string]string{LabelManagedBy: "x"} }},
	} {
		c := good
		tc.edit(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("Validate with bad %s = %v, want an error naming it", tc.field, err)
		}
	}
	if _, err := New(t.Context(), Config{}); !errors.Is(err, drivers.ErrInvalidArgument) {
		t.Errorf("New(empty config) = %v, want ErrInvalidArgument", err)
	}
}

// A supervisor that dies is an ERROR with its exit code and last log lines.
func TestExitedReportsLogs(t *testing.T) {
	requireDocker(t)
	d := newTestDriver(t, withStandin(testConfig(t)))
	id, name := drivertest.NewIDs()
	sb := drivertest.DefaultSandbox(id, name, testImage)
	sb.Spec.Command = []string{"sh", "-c", "echo boom-marker-1; echo boom-marker-2 >&2; exit 3"}
	if err := d.Create(t.Context(), sb); err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() { _, _ = d.Delete(context.Background(), id, name) })
	got := waitFor(t, d, id, "ERROR", func(s *computev1.DriverSandbox) bool { return phase(s) == openshellv1.SandboxPhase_SANDBOX_PHASE_ERROR })
	ready := drivers.FindCondition(got.GetStatus(), drivers.ConditionReady)
	if ready.GetReason() != drivers.ReasonContainerExited {
		t.Errorf("reason = %q, want %q", ready.GetReason(), drivers.ReasonContainerExited)
	}
	for _, w := range []string{"code 3", "boom-marker-1", "boom-marker-2"} {
		if !strings.Contains(ready.GetMessage(), w) {
			t.Errorf("message %q lacks %q", ready.GetMessage(), w)
		}
	}
}

// A supervisor killed from outside (whichever supervisor runs) is an ERROR too.
func TestKilledSupervisorIsError(t *testing.T) {
	requireDocker(t)
	d := newTestDriver(t, testConfig(t))
	id, name := drivertest.NewIDs()
	createReady(t.Context(), t, d, drivertest.DefaultSandbox(id, name, testImage))
	dockerCLI(t, "kill", "--signal", "KILL", containerName(name))
	got := waitFor(t, d, id, "ERROR", func(s *computev1.DriverSandbox) bool { return phase(s) == openshellv1.SandboxPhase_SANDBOX_PHASE_ERROR })
	if msg := drivers.FindCondition(got.GetStatus(), drivers.ConditionReady).GetMessage(); !strings.Contains(msg, "code 137") {
		t.Errorf("message %q lacks the exit code 137", msg)
	}
}

// After a gateway restart a new driver finds every sandbox again, stopped ones
// included, by labels and the stop marker.
func TestRestartFindsSandboxes(t *testing.T) {
	requireDocker(t)
	cfg := testConfig(t)
	d1 := newTestDriver(t, cfg)
	ctx := t.Context()
	idA, nameA := drivertest.NewIDs()
	idB, nameB := drivertest.NewIDs()
	for _, s := range [][2]string{{idA, nameA}, {idB, nameB}} {
		if err := d1.Create(ctx, drivertest.DefaultSandbox(s[0], s[1], testImage)); err != nil {
			t.Fatalf("Create: %v", err)
		}
		t.Cleanup(func() { _, _ = d1.Delete(context.Background(), s[0], s[1]) })
	}
	if err := d1.Stop(ctx, idB, nameB); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := d1.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	d2, err := New(ctx, cfg)
	if err != nil {
		t.Fatalf("New after restart: %v", err)
	}
	defer d2.Close()
	list, err := d2.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	phases := map[string]openshellv1.SandboxPhase{}
	for _, s := range list {
		phases[s.GetId()] = phase(s)
	}
	if len(list) != 2 || phases[idA] != openshellv1.SandboxPhase_SANDBOX_PHASE_READY || phases[idB] != openshellv1.SandboxPhase_SANDBOX_PHASE_STOPPED {
		t.Fatalf("after restart List = %v, want %s READY and %s STOPPED", phases, idA, idB)
	}
	// Found by name alone, and by a driver whose state dir is gone (label lookup).
	if got, err := d2.Get(ctx, "", nameA); err != nil || got.GetId() != idA {
		t.Errorf("Get by name = %v, %v; want %s", got.GetId(), err, idA)
	}
	lost := cfg
	lost.StateDir = t.TempDir()
	d3, err := New(ctx, lost)
	if err != nil {
		t.Fatalf("New with an empty state dir: %v", err)
	}
	defer d3.Close()
	if got, err := d3.Get(ctx, idA, ""); err != nil || phase(got) != openshellv1.SandboxPhase_SANDBOX_PHASE_READY {
		t.Errorf("Get by id without state files = %v, %v; want READY", got.GetStatus(), err)
	}
	if list, err := d3.List(ctx); err != nil || len(list) != 2 {
		t.Errorf("List without state files = %d sandboxes, %v; want 2", len(list), err)
	}
	// A Watch opened now reports both at once (its first resync).
	ch, err := d2.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	timeout := time.After(10 * time.Second)
	for len(seen) < 2 {
		select {
		case ev := <-ch:
			if s := ev.GetSandbox().GetSandbox(); s != nil {
				seen[s.GetId()] = true
			}
		case <-timeout:
			t.Fatalf("Watch's initial snapshot had %v, want both sandboxes", seen)
		}
	}
	if err := d2.Start(ctx, idB, ""); err != nil {
		t.Fatalf("Start: %v", err)
	}
	waitFor(t, d2, idB, "READY after Start", func(s *computev1.DriverSandbox) bool { return phase(s) == openshellv1.SandboxPhase_SANDBOX_PHASE_READY })
	// Deleting behind the driver's back is noticed by the watch.
	dockerCLI(t, "rm", "-f", containerName(nameA))
	timeout = time.After(15 * time.Second)
	for {
		select {
		case ev := <-ch:
			if ev.GetDeleted().GetSandboxId() == idA {
				return
			}
		case <-timeout:
			t.Fatalf("no deleted event for %s after docker rm", idA)
		}
	}
}

// The forwarder lets a sandbox reach a loopback-only gateway at host.openshell.internal.
func TestGatewayForwarder(t *testing.T) {
	requireDocker(t)
	t.Run("loopback gateway", func(t *testing.T) { testGatewayReachable(t, "127.0.0.1", true, false) })
	// A gateway on all addresses is reached directly; its port cannot be forwarded.
	t.Run("gateway on all addresses", func(t *testing.T) { testGatewayReachable(t, "0.0.0.0", false, false) })
	// The in-process gateway listens on the bridge address the driver asks for.
	t.Run("gateway serves the bridge", func(t *testing.T) { testGatewayReachable(t, "127.0.0.1", false, true) })
}

func testGatewayReachable(t *testing.T, bind string, wantForwarder, servesBridge bool) {
	ln, err := net.Listen("tcp", bind+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	got := make(chan string, 1)
	serve := func(ln net.Listener) {
		for { // skip empty connections (the driver probes the port)
			c, err := ln.Accept()
			if err != nil {
				return
			}
			buf := make([]byte, 64)
			n, _ := c.Read(buf)
			_, _ = c.Write([]byte("pong\n"))
			c.Close()
			if n > 0 {
				got <- string(buf[:n])
				return
			}
		}
	}

	cfg := withStandin(testConfig(t))
	cfg.GatewayPort = port
	cfg.GatewayEndpoint = "https://" + GatewayHost + ":" + strconv.Itoa(port)
	cfg.GatewayServesBridge = servesBridge
	d := newTestDriver(t, cfg)
	if (d.fwd != nil) != wantForwarder {
		t.Fatalf("forwarder running = %v, want %v", d.fwd != nil, wantForwarder)
	}
	reqs, err := d.ListenerRequirements(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	bridgeAddr := net.JoinHostPort(d.GatewayIP(), strconv.Itoa(port))
	if !servesBridge {
		if len(reqs) != 0 {
			t.Fatalf("listener requirements without GatewayServesBridge: %v", reqs)
		}
		go serve(ln)
	} else {
		if len(reqs) != 1 || reqs[0].GetExactBindAddress() != bridgeAddr {
			t.Fatalf("listener requirements = %v, want exactly %s", reqs, bridgeAddr)
		}
		// What the gateway does with the requirement: listen there itself.
		bl, err := net.Listen("tcp", bridgeAddr)
		if err != nil {
			t.Fatalf("listen on the required %s: %v", bridgeAddr, err)
		}
		defer bl.Close()
		go serve(bl)
	}
	id, name := drivertest.NewIDs()
	sb := drivertest.DefaultSandbox(id, name, testImage)
	sb.Spec.Command = []string{"sh", "-c", "echo ping-from-sandbox | nc " + GatewayHost + " " + strconv.Itoa(port) + "; sleep 3600"}
	if err := d.Create(t.Context(), sb); err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() { _, _ = d.Delete(context.Background(), id, name) })
	select {
	case msg := <-got:
		if !strings.Contains(msg, "ping-from-sandbox") {
			t.Errorf("gateway got %q", msg)
		}
	case <-time.After(20 * time.Second):
		ins, _ := d.cli.ContainerInspect(t.Context(), containerName(name), client.ContainerInspectOptions{})
		t.Fatalf("the sandbox never reached the loopback gateway through %s:%d; logs:\n%s", d.GatewayIP(), port, d.lastLogs(t.Context(), ins.Container.ID))
	}
	if !wantForwarder {
		return
	}
	// Close stops the forwarder: nothing listens on the bridge address any more.
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", net.JoinHostPort(d.GatewayIP(), strconv.Itoa(port)), time.Second); err == nil {
		c.Close()
		t.Errorf("forwarder still accepts after Close")
	}
	// The sandbox must still be deletable by a fresh driver (the test cleanup uses d).
	d2 := newTestDriver(t, cfg)
	if deleted, err := d2.Delete(t.Context(), id, name); err != nil || !deleted {
		t.Errorf("Delete via a new driver = %v, %v", deleted, err)
	}
}
