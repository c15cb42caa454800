// Package podman is the Podman compute driver: one container per sandbox, with the
// static supervisor bind-mounted in as the entrypoint, through a rootful or rootless
// Podman 5 service (`podman system service`) and its libpod REST API. It runs
// in-process in the gateway.
//
// Networking: every sandbox, rootful or rootless, gets its own slirp4netns user-mode
// network that shows the host loopback at 10.0.2.2, where the loopback-only gateway
// answers (host.openshell.internal). No sandbox shares a network with another
// container, and the gateway listens on no address other containers can reach; a
// rootless service could not give the host an address on a bridge anyway, and a
// rootful netavark bridge has no host address until its first container starts.
package podman

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/containers"
	"github.com/openshell/openshell/internal/atomicfile"
	"github.com/openshell/openshell/internal/relayframe"
	"github.com/openshell/openshell/internal/rundir"
)

// DriverName is reported in capabilities.
const DriverName = "podman"

var _ drivers.Driver = (*Driver)(nil)

// Driver manages sandbox containers on one Podman service. Safe for concurrent use.
type Driver struct {
	cfg       Config
	cli       *client
	log       *slog.Logger
	version   string
	rootless  bool
	cgroupsV1 bool
	ownerUID  int // uid the service runs as (owner of its socket)

	locks containers.Locks

	closeOnce sync.Once
	closed    chan struct{}
	wg        sync.WaitGroup // Watch goroutines
}

// New connects to the Podman service, refuses a Podman older than 5 or a host it
// cannot confine sandboxes on.
func New(ctx context.Context, cfg Config) (_ *Driver, retErr error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", drivers.ErrInvalidArgument, err)
	}
	d := &Driver{
		cfg:    cfg,
		cli:    newClient(cfg.Socket),
		log:    slog.Default().With("driver", DriverName),
		closed: make(chan struct{}),
	}
	defer func() {
		if retErr != nil {
			_ = d.Close()
		}
	}()
	if st, err := os.Stat(cfg.Socket); err == nil {
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			d.ownerUID = int(sys.Uid)
		}
	}

	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ping, err := d.cli.ping(pingCtx)
	if err != nil {
		return nil, d.unavailable(err)
	}
	if ping.LibpodAPIVersion == "" {
		return nil, fmt.Errorf("podman driver: %s answers but is not a Podman service (no Libpod-Api-Version header; is it Docker?): %w; point the driver's socket at `podman system service`, or use --drivers docker",
			cfg.Socket, drivers.ErrFailedPrecondition)
	}
	if err := checkVersion(ping.LibpodAPIVersion); err != nil {
		return nil, fmt.Errorf("podman driver: %s: %w", cfg.Socket, err)
	}
	in, err := d.cli.info(pingCtx)
	if err != nil {
		return nil, d.wrap(err, "read podman info")
	}
	if err := checkVersion(in.Version.Version); err != nil {
		return nil, fmt.Errorf("podman driver: %s: %w", cfg.Socket, err)
	}
	d.rootless = in.Host.Security.Rootless
	d.cgroupsV1 = in.Host.CgroupVersion == "v1"
	mode := "rootful"
	if d.rootless {
		mode = "rootless"
	}
	d.version = fmt.Sprintf("podman %s (%s, cgroups %s)", in.Version.Version, mode, in.Host.CgroupVersion)
	if d.cgroupsV1 && !cfg.AllowCgroupsV1 {
		return nil, fmt.Errorf("podman driver: the Podman service at %s runs on a cgroups v1 host, where a rootless Podman cannot limit a sandbox's cpu, memory or processes: %w; boot the host with cgroups v2 (systemd.unified_cgroup_hierarchy=1), or accept unconfined resources by setting allow_cgroups_v1 = true in [drivers.podman] (or %s=1)",
			cfg.Socket, drivers.ErrFailedPrecondition, EnvAllowCgroupsV1)
	}
	if d.cgroupsV1 {
		d.log.Warn("cgroups v1 host allowed by configuration", "rootless", d.rootless)
	}
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "sandboxes"), 0o700); err != nil {
		return nil, fmt.Errorf("podman driver: state_dir %s: %w", cfg.StateDir, err)
	}
	if d.foreignOwner() {
		if err := d.openPath(filepath.Join(cfg.StateDir, "sandboxes")); err != nil {
			return nil, err
		}
	}
	d.log.Info("podman driver ready", "socket", cfg.Socket, "engine", d.version)
	return d, nil
}

// checkVersion refuses a Podman older than MinVersion, naming the version.
func checkVersion(v string) error {
	major, err := strconv.Atoi(strings.SplitN(strings.TrimPrefix(strings.TrimSpace(v), "v"), ".", 2)[0])
	if err != nil {
		return fmt.Errorf("cannot read the Podman version %q: %w", v, drivers.ErrFailedPrecondition)
	}
	if major < MinVersion {
		return fmt.Errorf("podman %s is too old: the driver needs Podman %d.0 or newer (its libpod API and netavark networking): %w; install Podman 5 (scripts/setup-podman.sh builds it) and point the driver at its socket",
			v, MinVersion, drivers.ErrFailedPrecondition)
	}
	return nil
}

// foreignOwner: the gateway runs as root and the service as another user (a rootless
// service of an unprivileged user), so files handed to sandboxes are chowned to it.
func (d *Driver) foreignOwner() bool {
	return d.rootless && os.Getuid() == 0 && d.ownerUID != 0
}

// openPath lets a rootless service that runs as another user reach the bind-mount
// sources below dir: every directory on the way that root owns and others cannot
// traverse gets search permission (0711: no listing). Each sandbox's own directory
// stays private to the service's user.
func (d *Driver) openPath(dir string) error {
	if err := rundir.LetTraverse(dir, d.ownerUID); err != nil {
		return fmt.Errorf("podman driver: the rootless Podman service cannot reach the sandbox files bind-mounted from %s: %w; set state_dir in [drivers.podman] to a directory that user can reach, or run the gateway as that user (%w)", dir, err, drivers.ErrFailedPrecondition)
	}
	return nil
}

// Rootless reports whether the service is rootless.
func (d *Driver) Rootless() bool { return d.rootless }

// Close stops every Watch; sandboxes keep running.
func (d *Driver) Close() error {
	d.closeOnce.Do(func() {
		close(d.closed)
		d.wg.Wait()
		d.cli.close()
	})
	return nil
}

// Capabilities reports the driver name, the service version and the default image.
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
	if c, ok, err := d.lookupByID(ctx, sb.GetId()); err != nil {
		return err
	} else if ok {
		return fmt.Errorf("sandbox %s: %w (container %s)", sb.GetId(), drivers.ErrAlreadyExists, c.Name)
	}
	stateDir, err := d.writeState(sb.GetId(), sb.GetSpec().GetSandboxToken())
	if err != nil {
		return err
	}
	if err := d.shareSocketDir(p.socketDir); err != nil {
		_ = os.RemoveAll(stateDir)
		return fmt.Errorf("sandbox %s: %w", sb.GetId(), err)
	}
	defer func() {
		if retErr != nil {
			_ = os.RemoveAll(stateDir)
		}
	}()
	cid, err := d.cli.containerCreate(ctx, d.spec(p, stateDir))
	if err != nil {
		if isNameInUse(err) {
			return fmt.Errorf("sandbox %s: container name %q is already in use: %w; pick another sandbox name or delete the old sandbox (podman rm %s)",
				sb.GetId(), containerName(p.name), drivers.ErrAlreadyExists, containerName(p.name))
		}
		return d.wrap(err, "create container for sandbox "+sb.GetId())
	}
	defer func() {
		if retErr != nil {
			// A fresh context: the caller's may be the reason we are failing.
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			_ = d.cli.containerRemove(cctx, cid)
		}
	}()
	if err := atomicfile.WriteFile(filepath.Join(stateDir, "container"), []byte(cid), 0o644); err != nil {
		return fmt.Errorf("sandbox %s: record container id: %w", sb.GetId(), err)
	}
	if err := d.cli.containerStart(ctx, cid); err != nil {
		return d.wrap(err, "start container for sandbox "+sb.GetId())
	}
	d.log.Info("sandbox container started", "sandbox_id", sb.GetId(), "container", containers.ShortID(cid), "image", p.imageRef)
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
	items, err := d.cli.containerList(ctx, d.selector())
	if err != nil {
		return nil, d.wrap(err, "list sandbox containers")
	}
	out := make([]*computev1.DriverSandbox, 0, len(items))
	for _, it := range items {
		c, err := d.cli.containerInspect(ctx, it.ID)
		if isNotFound(err) {
			continue // removed between list and inspect
		}
		if err != nil {
			return nil, d.wrap(err, "inspect container "+containers.ShortID(it.ID))
		}
		out = append(out, d.observe(ctx, c))
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
	sid := c.Config.Labels[drivers.LabelSandboxID]
	if err := containers.SetStopped(d.stateDir(sid), sid, true, stateDirPerm); err != nil {
		return err
	}
	if err := d.cli.containerStop(ctx, c.ID, d.cfg.StopTimeout); err != nil {
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
	sid := c.Config.Labels[drivers.LabelSandboxID]
	if err := d.cli.containerStart(ctx, c.ID); err != nil {
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
	sid := c.Config.Labels[drivers.LabelSandboxID]
	if err := d.cli.containerRemove(ctx, c.ID); err != nil {
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
	d.locks.Forget(id)
	return true, nil
}

// find returns the container of a sandbox, by id when given, else by name; when the
// fast paths miss it lists containers by label, so sandboxes whose state dir is gone
// (or that another gateway made) are still found.
func (d *Driver) find(ctx context.Context, id, name string) (containerInspect, error) {
	switch {
	case id != "":
		if c, ok, err := d.lookupByID(ctx, id); err != nil || ok {
			return c, err
		}
	case name != "":
		c, err := d.cli.containerInspect(ctx, containerName(name))
		if err == nil && d.owns(c) && c.Config.Labels[drivers.LabelSandboxName] == name {
			return c, nil
		}
		if err != nil && !isNotFound(err) {
			return containerInspect{}, d.wrap(err, "find sandbox "+name)
		}
	default:
		return containerInspect{}, fmt.Errorf("sandbox: neither id nor name given: %w", drivers.ErrInvalidArgument)
	}
	sel := d.selector()
	if id != "" {
		sel[drivers.LabelSandboxID] = id
	} else {
		sel[drivers.LabelSandboxName] = name
	}
	items, err := d.cli.containerList(ctx, sel)
	if err != nil {
		return containerInspect{}, d.wrap(err, "find sandbox "+cmp.Or(id, name))
	}
	for _, it := range items {
		c, err := d.cli.containerInspect(ctx, it.ID)
		if isNotFound(err) {
			continue
		}
		if err != nil {
			return containerInspect{}, d.wrap(err, "inspect container "+containers.ShortID(it.ID))
		}
		if d.owns(c) {
			return c, nil
		}
	}
	return containerInspect{}, fmt.Errorf("sandbox %s: %w", cmp.Or(id, name), drivers.ErrNotFound)
}

// lookupByID inspects the container recorded in the sandbox's state dir; ok is false
// when there is no record or the recorded container is gone.
func (d *Driver) lookupByID(ctx context.Context, id string) (containerInspect, bool, error) {
	raw, err := os.ReadFile(filepath.Join(d.stateDir(id), "container"))
	if err != nil {
		return containerInspect{}, false, nil
	}
	c, err := d.cli.containerInspect(ctx, strings.TrimSpace(string(raw)))
	if isNotFound(err) {
		return containerInspect{}, false, nil
	}
	if err != nil {
		return containerInspect{}, false, d.wrap(err, "find sandbox "+id)
	}
	if !d.owns(c) || c.Config.Labels[drivers.LabelSandboxID] != id {
		return containerInspect{}, false, nil
	}
	return c, true, nil
}

// owns reports whether a container carries this driver instance's labels.
func (d *Driver) owns(c containerInspect) bool {
	if c.Config == nil || c.Config.Labels[drivers.LabelManagedBy] != drivers.ManagedByValue {
		return false
	}
	for k, v := range d.cfg.Labels {
		if c.Config.Labels[k] != v {
			return false
		}
	}
	return true
}

// selector is the label set of every container this driver instance manages.
func (d *Driver) selector() map[string]string {
	sel := map[string]string{drivers.LabelManagedBy: drivers.ManagedByValue}
	for k, v := range d.cfg.Labels {
		sel[k] = v
	}
	return sel
}

// stateDirPerm is the mode of a sandbox's state dir.
const stateDirPerm = 0o700

// Per-sandbox state on the host: StateDir/sandboxes/<id>/{token,ca.pem,container,stopped}.
// The directory is bind-mounted read-only at drivers.BootstrapDir.
func (d *Driver) stateDir(id string) string {
	return filepath.Join(d.cfg.StateDir, "sandboxes", filepath.Base(id))
}

func (d *Driver) writeState(id, token string) (string, error) {
	dir := d.stateDir(id)
	if err := os.MkdirAll(dir, stateDirPerm); err != nil {
		return "", fmt.Errorf("sandbox %s: state dir: %w", id, err)
	}
	owner := -1
	if d.foreignOwner() {
		// The container's root is the service's user on the host: it must read the
		// token, and nobody else on the host may.
		owner = d.ownerUID
		if err := os.Chown(dir, owner, owner); err != nil {
			return "", fmt.Errorf("sandbox %s: state dir: %w", id, err)
		}
	}
	// A leftover from an earlier sandbox with this id (removed behind our back).
	if err := containers.SetStopped(d.stateDir(id), id, false, stateDirPerm); err != nil {
		return "", err
	}
	// The token is the sandbox's credential: readable only by the container's root
	// (the supervisor); the supervisor covers it before the agent starts.
	if err := writeOwned(filepath.Join(dir, "token"), []byte(token), 0o600, owner); err != nil {
		return "", fmt.Errorf("sandbox %s: write token: %w", id, err)
	}
	if len(d.cfg.CAPEM) > 0 {
		if err := writeOwned(filepath.Join(dir, "ca.pem"), d.cfg.CAPEM, 0o644, owner); err != nil {
			return "", fmt.Errorf("sandbox %s: write CA bundle: %w", id, err)
		}
	}
	return dir, nil
}

// shareSocketDir hands the sandbox's gateway socket dir (and the sockets in it)
// to a rootless service's user, the container's root, as the token is, and lets
// that user reach the directory to mount it. The gateway gives a socket it
// re-creates there the directory's owner.
func (d *Driver) shareSocketDir(dir string) error {
	if dir == "" || !d.foreignOwner() {
		return nil
	}
	if err := os.Chown(dir, d.ownerUID, d.ownerUID); err != nil {
		return fmt.Errorf("gateway socket dir: %w", err)
	}
	// The gRPC socket and the bulk socket beside it (file transfers' bytes).
	for _, name := range []string{drivers.GatewaySocketName, relayframe.BulkSocketName} {
		sock := filepath.Join(dir, name)
		if err := os.Chown(sock, d.ownerUID, d.ownerUID); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("gateway socket %s: %w", name, err)
		}
	}
	return d.openPath(filepath.Dir(dir))
}

// writeOwned writes path atomically; owner >= 0 then gives it to that uid (the
// rootless service's user, the container's root).
func writeOwned(path string, data []byte, perm os.FileMode, owner int) error {
	if err := atomicfile.WriteFile(path, data, perm); err != nil {
		return err
	}
	if owner >= 0 {
		return os.Chown(path, owner, owner)
	}
	return nil
}
