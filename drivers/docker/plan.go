package docker

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/containers"
	"github.com/openshell/openshell/supervisor/bootstrap"
)

// supervisorCaps are the capabilities the supervisor keeps (the shared set, with
// the reason for each in drivers/containers); everything else is dropped.
var supervisorCaps = containers.SupervisorCapabilities

// plan is a validated create request with everything resolved.
type plan struct {
	id, name, workspace string
	imageRef, imageID   string
	imageUser, workdir  string
	nanoCPUs            int64
	memory, memoryReq   int64
	gpu                 *container.DeviceRequest
	runtime             string
	labels              map[string]string
	boot                bootstrap.Config
	// socketDir is the host dir of the sandbox's own gateway socket ("" = TCP).
	socketDir string
}

// plan validates a create request and resolves the image and resources.
func (d *Driver) plan(ctx context.Context, sb *computev1.DriverSandbox) (*plan, error) {
	invalid := func(format string, args ...any) error {
		return fmt.Errorf("sandbox %s: %s: %w", sb.GetId(), fmt.Sprintf(format, args...), drivers.ErrInvalidArgument)
	}
	if err := drivers.ValidateSandbox(sb); err != nil {
		return nil, err
	}
	spec := sb.GetSpec()
	tmpl := spec.GetTemplate()
	p := &plan{id: sb.GetId(), name: sb.GetName(), workspace: sb.GetWorkspace()}

	p.imageRef = tmpl.GetImage()
	if p.imageRef == "" {
		p.imageRef = d.cfg.DefaultImage
	}
	if p.imageRef == "" {
		return nil, invalid("no image: set the sandbox's image (or the driver's default_image)")
	}
	img, err := d.cli.ImageInspect(ctx, p.imageRef)
	if err != nil {
		if isNotFound(err) {
			return nil, invalid("image %q is not in the local Docker daemon; pull it (docker pull %s) or build it (openshell sandbox create --from DIR) first", p.imageRef, p.imageRef)
		}
		return nil, d.wrap(err, "inspect image "+p.imageRef)
	}
	// Pin the immutable id: a later re-tag must not change what this sandbox runs.
	p.imageID = img.ID
	if img.Config != nil {
		p.imageUser = img.Config.User
		p.workdir = img.Config.WorkingDir
	}

	// Limits only: the limit, else the request, else the default; a memory request
	// becomes a soft reservation.
	res, err := containers.ReadResources(tmpl.GetResources(), d.cfg.DefaultCPU, d.cfg.DefaultMemory, d.cfg.MinMemory)
	if err != nil {
		return nil, invalid("%v", err)
	}
	p.nanoCPUs, p.memory, p.memoryReq = res.NanoCPUs, res.Memory, res.MemoryReq

	ids, err := d.gpuDeviceIDs(sb)
	if err != nil {
		return nil, err
	}
	if len(ids) > 0 {
		p.gpu = &container.DeviceRequest{Driver: "cdi", DeviceIDs: ids}
	}

	// runtime_class_name picks one of the daemon's OCI runtimes (e.g. a sandboxed one).
	if rc := tmpl.GetPlatformConfig().GetFields()["runtime_class_name"].GetStringValue(); rc != "" {
		if !slices.Contains(d.runtimes, rc) {
			return nil, invalid("runtime_class_name %q is not a runtime of this Docker daemon (it has: %s)", rc, strings.Join(d.runtimes, ", "))
		}
		p.runtime = rc
	}

	p.labels = map[string]string{}
	for k, v := range tmpl.GetLabels() {
		if strings.HasPrefix(k, "openshell.ai/") {
			return nil, invalid("label %q: the openshell.ai/ prefix is reserved", k)
		}
		p.labels[k] = v
	}
	maps.Copy(p.labels, d.cfg.Labels)
	p.labels[LabelManagedBy] = ManagedByValue
	p.labels[LabelSandboxID] = p.id
	p.labels[LabelSandboxName] = p.name
	p.labels[LabelImage] = p.imageRef
	if p.workspace != "" {
		p.labels[LabelWorkspace] = p.workspace
	}

	env := map[string]string{}
	maps.Copy(env, tmpl.GetEnvironment())
	maps.Copy(env, spec.GetEnvironment())
	p.boot = bootstrap.Config{
		Endpoint:     d.cfg.GatewayEndpoint,
		SandboxID:    p.id,
		SandboxName:  p.name,
		TokenFile:    BootstrapDir + "/token",
		LogLevel:     cmp.Or(spec.GetLogLevel(), d.cfg.LogLevel),
		ImageUser:    p.imageUser,
		ImageWorkdir: p.workdir,
		Main: bootstrap.MainProcessSpec{
			Version: 1,
			Command: spec.GetCommand(),
			TTY:     spec.GetTty(),
			Env:     env,
		},
	}
	if len(d.cfg.CAPEM) > 0 {
		p.boot.CAFile = BootstrapDir + "/ca.pem"
	}
	if dir := spec.GetGatewaySocketDir(); dir != "" {
		p.socketDir = dir
		p.boot.Endpoint = drivers.GatewaySocketEndpoint()
	}
	return p, nil
}

// containerConfig renders a plan as Docker create options.
func (d *Driver) containerConfig(p *plan, stateDir string) (*container.Config, *container.HostConfig, *network.NetworkingConfig) {
	stopTimeout := int(d.cfg.StopTimeout.Seconds())
	cfg := &container.Config{
		Image:      p.imageID,
		Hostname:   hostname(p.name),
		Entrypoint: []string{SupervisorPath},
		// Root so the supervisor can set the sandbox up; it runs the agent as ImageUser.
		User:        "0:0",
		Env:         p.boot.Env(),
		Labels:      p.labels,
		StopSignal:  "SIGTERM",
		StopTimeout: &stopTimeout,
		// The image's HEALTHCHECK would test the agent, not the supervisor we start.
		Healthcheck: &container.HealthConfig{Test: []string{"NONE"}},
	}
	pids := d.cfg.PidsLimit
	swap := int64(0)
	if p.memory > 0 {
		swap = p.memory // memory+swap = memory: no swap, as a Kubernetes limit means
	}
	host := &container.HostConfig{
		Binds: []string{
			d.cfg.SupervisorBinary + ":" + SupervisorPath + ":ro",
			stateDir + ":" + BootstrapDir + ":ro",
		},
		NetworkMode: container.NetworkMode(d.cfg.Network),
		// The host's side of the bridge, by name: where host services a policy
		// allows are found. The gateway listens there only without a socket.
		ExtraHosts:    []string{GatewayHost + ":" + d.gatewayIP},
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyDisabled},
		CapDrop:       []string{"ALL"},
		CapAdd:        slices.Clone(supervisorCaps),
		// Nothing in the sandbox may gain privileges through setuid binaries.
		SecurityOpt: []string{"no-new-privileges:true"},
		Resources: container.Resources{
			NanoCPUs:          p.nanoCPUs,
			Memory:            p.memory,
			MemorySwap:        swap,
			MemoryReservation: p.memoryReq,
			PidsLimit:         &pids,
		},
	}
	if p.socketDir != "" {
		// The directory, not the socket: a restarted gateway's new socket shows up.
		host.Binds = append(host.Binds, p.socketDir+":"+drivers.GatewaySocketMountDir+":ro")
	}
	host.Runtime = p.runtime
	if p.gpu != nil {
		host.DeviceRequests = []container.DeviceRequest{*p.gpu}
	}
	return cfg, host, &network.NetworkingConfig{}
}

// hostname is the sandbox name cut to a valid host name (63 chars, no dots/underscores).
func hostname(name string) string {
	h := strings.Map(func(r rune) rune {
		if r == '.' || r == '_' {
			return '-'
		}
		return r
	}, name)
	if len(h) > 63 {
		h = h[:63]
	}
	return strings.Trim(h, "-")
}
