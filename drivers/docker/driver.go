// Package docker is the Docker compute driver: one container per sandbox, with the
// static supervisor bind-mounted in as the entrypoint, on a dedicated bridge network.
// It runs in-process in the gateway and talks to dockerd through its API socket.
package docker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/containers"
	"github.com/openshell/openshell/internal/atomicfile"
)

// DriverName is reported in capabilities.
const DriverName = "docker"

var _ drivers.Driver = (*Driver)(nil)

// Driver manages sandbox containers on one Docker daemon. Safe for concurrent use.
type Driver struct {
	cfg       Config
	cli       *client.Client
	log       *slog.Logger
	version   string   // daemon version, for capabilities
	cdiDirs   []string // daemon CDI spec dirs; empty = no GPU support
	runtimes  []string // OCI runtimes the daemon offers (for runtime_class_name)
	gatewayIP string   // the openshell bridge network's gateway address
	fwd       *forwarder

	locks containers.Locks

	closeOnce sync.Once
	closed    chan struct{}
	wg        sync.WaitGroup // Watch goroutines
}

// New connects to the Docker daemon, makes sure the sandbox network exists and starts
// the gateway forwarder. A daemon that does not answer is an ErrUnavailable naming the
// socket and how to start Docker.
func New(ctx context.Context, cfg Config) (_ *Driver, retErr error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", drivers.ErrInvalidArgument, err)
	}
	cli, err := client.New(client.WithHost(cfg.Host))
	if err != nil {
		return nil, fmt.Errorf("docker driver: host %q: %w: %w", cfg.Host, drivers.ErrInvalidArgument, err)
	}
	d := &Driver{
		cfg:    cfg,
		cli:    cli,
		log:    slog.Default().With("driver", DriverName),
		closed: make(chan struct{}),
	}
	defer func() {
		if retErr != nil {
			_ = d.Close()
		}
	}()

	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cli.Ping(pingCtx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		return nil, d.unavailable(err)
	}
	info, err := cli.Info(pingCtx, client.InfoOptions{})
	if err != nil {
		return nil, d.wrap(err, "read daemon info")
	}
	d.version = fmt.Sprintf("docker engine %s (API %s)", info.Info.ServerVersion, cli.ClientVersion())
	d.cdiDirs = info.Info.CDISpecDirs
	for name := range info.Info.Runtimes {
		d.runtimes = append(d.runtimes, name)
	}
	slices.Sort(d.runtimes)

	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("docker driver: state_dir %s: %w", cfg.StateDir, err)
	}
	gw, err := d.ensureNetwork(ctx)
	if err != nil {
		return nil, err
	}
	d.gatewayIP = gw
	if cfg.GatewayPort != 0 && !cfg.GatewayServesBridge {
		d.fwd, err = startForwarder(d.log, gw, cfg.GatewayPort)
		if errors.Is(err, syscall.EADDRINUSE) && answers(ctx, gw, cfg.GatewayPort) {
			// The gateway listens on all addresses (or on the bridge itself), so
			// sandboxes reach it directly and the port is taken: no forwarder needed.
			d.log.Info("gateway already reachable on the sandbox bridge; no forwarder", "addr", net.JoinHostPort(gw, strconv.Itoa(cfg.GatewayPort)))
			err = nil
		}
		if err != nil {
			return nil, err
		}
	}
	d.log.Info("docker driver ready", "host", cfg.Host, "engine", d.version, "network", cfg.Network, "gateway_ip", gw)
	return d, nil
}

// answers reports whether something accepts TCP connections at ip:port.
func answers(ctx context.Context, ip string, port int) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// Close stops the forwarder and every Watch; sandboxes keep running.
func (d *Driver) Close() error {
	var errs []error
	d.closeOnce.Do(func() {
		close(d.closed)
		if d.fwd != nil {
			errs = append(errs, d.fwd.Close())
		}
		d.wg.Wait()
		errs = append(errs, d.cli.Close())
	})
	return errors.Join(errs...)
}

// GatewayIP is the address sandboxes reach the gateway at (host.openshell.internal).
func (d *Driver) GatewayIP() string { return d.gatewayIP }

// Capabilities reports the driver name, the daemon version and the default image.
// Containers survive a gateway restart, so the gateway does not manage their lifecycle.
func (d *Driver) Capabilities(ctx context.Context) (*computev1.GetCapabilitiesResponse, error) {
	return &computev1.GetCapabilitiesResponse{
		DriverName:              DriverName,
		DriverVersion:           d.version,
		DefaultImage:            d.cfg.DefaultImage,
		GatewayManagesLifecycle: false,
	}, nil
}

func containerName(sandboxName string) string { return "openshell-" + sandboxName }

// ValidateCreate checks the request, resolves the image and the resources without
// creating anything.
func (d *Driver) ValidateCreate(ctx context.Context, sb *computev1.DriverSandbox) error {
	_, err := d.plan(ctx, sb)
	return err
}

// Create creates and starts the sandbox container. It returns once the container is
// started; readiness is reported by Get/Watch.
func (d *Driver) Create(ctx context.Context, sb *computev1.DriverSandbox) (retErr error) {
	p, err := d.plan(ctx, sb)
	if err != nil {
		return err
	}
	unlock := d.locks.Lock(sb.GetId())
	defer unlock()

	// The state dir records the container of every sandbox this driver created, so
	// a known id is found without listing containers (a list waits for every
	// container being started, which slows parallel creates down). A duplicate name
	// is caught by Docker itself.
	if c, ok, err := d.lookupByID(ctx, sb.GetId()); err != nil {
		return err
	} else if ok {
		return fmt.Errorf("sandbox %s: %w (container %s)", sb.GetId(), drivers.ErrAlreadyExists, strings.TrimPrefix(c.Name, "/"))
	}

	stateDir, err := d.writeState(sb.GetId(), sb.GetSpec().GetSandboxToken())
	if err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			_ = os.RemoveAll(stateDir)
		}
	}()
	cfg, hostCfg, netCfg := d.containerConfig(p, stateDir)
	created, err := d.cli.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name:             containerName(p.name),
		Config:           cfg,
		HostConfig:       hostCfg,
		NetworkingConfig: netCfg,
	})
	if err != nil {
		if isConflict(err) {
			return fmt.Errorf("sandbox %s: container name %q is already in use: %w; pick another sandbox name or delete the old sandbox",
				sb.GetId(), containerName(p.name), drivers.ErrAlreadyExists)
		}
		return d.wrap(err, "create container for sandbox "+sb.GetId())
	}
	defer func() {
		if retErr != nil {
			// A fresh context: the caller's may be the reason we are failing.
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			_, _ = d.cli.ContainerRemove(cctx, created.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
		}
	}()
	if err := atomicfile.WriteFile(filepath.Join(stateDir, "container"), []byte(created.ID), 0o644); err != nil {
		return fmt.Errorf("sandbox %s: record container id: %w", sb.GetId(), err)
	}
	if _, err := d.cli.ContainerStart(ctx, created.ID, client.ContainerStartOptions{}); err != nil {
		return d.wrap(err, "start container for sandbox "+sb.GetId())
	}
	d.log.Info("sandbox container started", "sandbox_id", sb.GetId(), "container", containers.ShortID(created.ID), "image", p.imageRef)
	return nil
}

// Get returns the sandbox's current observation.
func (d *Driver) Get(ctx context.Context, id, name string) (*computev1.DriverSandbox, error) {
	c, err := d.find(ctx, id, name)
	if err != nil {
		return nil, err
	}
	return d.observe(ctx, c), nil
}

// List returns every sandbox container with the driver's labels.
func (d *Driver) List(ctx context.Context) ([]*computev1.DriverSandbox, error) {
	res, err := d.cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: d.filters()})
	if err != nil {
		return nil, d.wrap(err, "list sandbox containers")
	}
	out := make([]*computev1.DriverSandbox, 0, len(res.Items))
	for _, c := range res.Items {
		ins, err := d.cli.ContainerInspect(ctx, c.ID, client.ContainerInspectOptions{})
		if isNotFound(err) {
			continue // removed between list and inspect
		}
		if err != nil {
			return nil, d.wrap(err, "inspect container "+containers.ShortID(c.ID))
		}
		out = append(out, d.observe(ctx, ins.Container))
	}
	return out, nil
}

// Stop stops the container, keeping its filesystem; the sandbox then reports
// Suspended=True. A marker file records that the stop was requested, so an exit we
// asked for is not mistaken for a crash (also after a gateway restart).
func (d *Driver) Stop(ctx context.Context, id, name string) error {
	c, err := d.find(ctx, id, name)
	if err != nil {
		return err
	}
	sid := c.Config.Labels[LabelSandboxID]
	if err := containers.SetStopped(d.stateDir(sid), sid, true, stateDirPerm); err != nil {
		return err
	}
	timeout := int(d.cfg.StopTimeout.Round(time.Second) / time.Second)
	if _, err := d.cli.ContainerStop(ctx, c.ID, client.ContainerStopOptions{Timeout: &timeout}); err != nil {
		return d.wrap(err, "stop sandbox "+sid)
	}
	return nil
}

// Start starts a stopped sandbox's container again.
func (d *Driver) Start(ctx context.Context, id, name string) error {
	c, err := d.find(ctx, id, name)
	if err != nil {
		return err
	}
	sid := c.Config.Labels[LabelSandboxID]
	if _, err := d.cli.ContainerStart(ctx, c.ID, client.ContainerStartOptions{}); err != nil {
		return d.wrap(err, "start sandbox "+sid)
	}
	return containers.SetStopped(d.stateDir(sid), sid, false, stateDirPerm)
}

// Delete removes the container, its anonymous volumes and the per-sandbox files.
func (d *Driver) Delete(ctx context.Context, id, name string) (bool, error) {
	unlock := d.locks.Lock(id)
	defer unlock()
	c, err := d.find(ctx, id, name)
	if errors.Is(err, drivers.ErrNotFound) {
		if id != "" {
			_ = os.RemoveAll(d.stateDir(id))
		}
		return false, nil
	}
	if err != nil {
		return false, err
	}
	sid := c.Config.Labels[LabelSandboxID]
	if _, err := d.cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
		if isNotFound(err) {
			_ = os.RemoveAll(d.stateDir(sid))
			return false, nil
		}
		return false, d.wrap(err, "remove sandbox "+sid)
	}
	if err := os.RemoveAll(d.stateDir(sid)); err != nil {
		return true, fmt.Errorf("sandbox %s: container removed but its state files remain: %w", sid, err)
	}
	d.log.Info("sandbox container removed", "sandbox_id", sid, "container", containers.ShortID(c.ID))
	// Forget the id's lock so the map does not grow with every sandbox ever made; a
	// caller already waiting on it still gets it, which is harmless after a delete.
	d.locks.Forget(id)
	return true, nil
}

// find returns the container of a sandbox, by id when given, else by name. The fast
// paths inspect one container (the id recorded in the state dir, or the container
// named after the sandbox); only when those miss does it list containers by label, so
// sandboxes whose state dir is gone are still found.
func (d *Driver) find(ctx context.Context, id, name string) (container.InspectResponse, error) {
	switch {
	case id != "":
		if c, ok, err := d.lookupByID(ctx, id); err != nil || ok {
			return c, err
		}
	case name != "":
		c, err := d.cli.ContainerInspect(ctx, containerName(name), client.ContainerInspectOptions{})
		if err == nil && d.owns(c.Container) && c.Container.Config.Labels[LabelSandboxName] == name {
			return c.Container, nil
		}
		if err != nil && !isNotFound(err) {
			return container.InspectResponse{}, d.wrap(err, "find sandbox "+name)
		}
	default:
		return container.InspectResponse{}, fmt.Errorf("sandbox: neither id nor name given: %w", drivers.ErrInvalidArgument)
	}
	f := d.filters()
	if id != "" {
		f.Add("label", LabelSandboxID+"="+id)
	} else {
		f.Add("label", LabelSandboxName+"="+name)
	}
	res, err := d.cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		return container.InspectResponse{}, d.wrap(err, "find sandbox "+cmp.Or(id, name))
	}
	for _, it := range res.Items {
		c, err := d.cli.ContainerInspect(ctx, it.ID, client.ContainerInspectOptions{})
		if isNotFound(err) {
			continue
		}
		if err != nil {
			return container.InspectResponse{}, d.wrap(err, "inspect container "+containers.ShortID(it.ID))
		}
		return c.Container, nil
	}
	return container.InspectResponse{}, fmt.Errorf("sandbox %s: %w", cmp.Or(id, name), drivers.ErrNotFound)
}

// lookupByID inspects the container recorded in the sandbox's state dir; ok is false
// when there is no record or the recorded container is gone.
func (d *Driver) lookupByID(ctx context.Context, id string) (container.InspectResponse, bool, error) {
	raw, err := os.ReadFile(filepath.Join(d.stateDir(id), "container"))
	if err != nil {
		return container.InspectResponse{}, false, nil
	}
	c, err := d.cli.ContainerInspect(ctx, strings.TrimSpace(string(raw)), client.ContainerInspectOptions{})
	if isNotFound(err) {
		return container.InspectResponse{}, false, nil
	}
	if err != nil {
		return container.InspectResponse{}, false, d.wrap(err, "find sandbox "+id)
	}
	if !d.owns(c.Container) || c.Container.Config.Labels[LabelSandboxID] != id {
		return container.InspectResponse{}, false, nil
	}
	return c.Container, true, nil
}

// owns reports whether a container carries this driver instance's labels.
func (d *Driver) owns(c container.InspectResponse) bool {
	if c.Config == nil || c.Config.Labels[LabelManagedBy] != ManagedByValue {
		return false
	}
	for k, v := range d.cfg.Labels {
		if c.Config.Labels[k] != v {
			return false
		}
	}
	return true
}

// filters selects the containers this driver instance manages.
func (d *Driver) filters() client.Filters {
	f := make(client.Filters).Add("label", LabelManagedBy+"="+ManagedByValue)
	for k, v := range d.cfg.Labels {
		f.Add("label", k+"="+v)
	}
	return f
}

// stateDirPerm is the mode of a sandbox's state dir.
const stateDirPerm = 0o755

// Per-sandbox state on the host: StateDir/<id>/{token,ca.pem,stopped}. The directory is
// bind-mounted read-only at BootstrapDir.
func (d *Driver) stateDir(id string) string {
	return filepath.Join(d.cfg.StateDir, "sandboxes", filepath.Base(id))
}

func (d *Driver) writeState(id, token string) (string, error) {
	dir := d.stateDir(id)
	if err := os.MkdirAll(dir, stateDirPerm); err != nil {
		return "", fmt.Errorf("sandbox %s: state dir: %w", id, err)
	}
	// A leftover from an earlier sandbox with this id (removed behind our back).
	if err := containers.SetStopped(d.stateDir(id), id, false, stateDirPerm); err != nil {
		return "", err
	}
	// The token is the sandbox's credential: root-only; the supervisor runs as root.
	if err := atomicfile.WriteFile(filepath.Join(dir, "token"), []byte(token), 0o600); err != nil {
		return "", fmt.Errorf("sandbox %s: write token: %w", id, err)
	}
	if len(d.cfg.CAPEM) > 0 {
		if err := atomicfile.WriteFile(filepath.Join(dir, "ca.pem"), d.cfg.CAPEM, 0o644); err != nil {
			return "", fmt.Errorf("sandbox %s: write CA bundle: %w", id, err)
		}
	}
	return dir, nil
}

// ListenerRequirements implements drivers.ListenerRequirer: with GatewayServesBridge
// the gateway itself listens on the bridge gateway IP, where sandboxes dial
// host.openshell.internal.
func (d *Driver) ListenerRequirements(context.Context) ([]*computev1.GatewayListenerRequirement, error) {
	if !d.cfg.GatewayServesBridge || d.cfg.GatewayPort == 0 {
		return nil, nil
	}
	addr := net.JoinHostPort(d.gatewayIP, strconv.Itoa(d.cfg.GatewayPort))
	return []*computev1.GatewayListenerRequirement{{
		Reason:   "sandboxes on the " + d.cfg.Network + " bridge reach the gateway at " + addr,
		Selector: &computev1.GatewayListenerRequirement_ExactBindAddress{ExactBindAddress: addr},
	}}, nil
}
