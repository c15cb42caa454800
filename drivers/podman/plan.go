package podman

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"syscall"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/containers"
	"github.com/openshell/openshell/supervisor/bootstrap"
)

// supervisorCaps are the capabilities the supervisor keeps (the shared set, with
// the reason for each in drivers/containers); everything else is dropped.
var supervisorCaps = containers.SupervisorCapabilities

// cpuPeriod is the CFS period the cpu limit is expressed in (100 ms, the kernel default).
const cpuPeriod = 100_000

// plan is a validated create request with everything resolved.
type plan struct {
	id, name, workspace string
	imageRef, imageID   string
	nanoCPUs            int64
	memory, memoryReq   int64
	runtime             string
	gpus                []string // CDI device ids (kind=name)
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

	p.imageRef = cmp.Or(tmpl.GetImage(), d.cfg.DefaultImage)
	if p.imageRef == "" {
		return nil, invalid("no image: set the sandbox's image (or the driver's default_image)")
	}
	img, err := d.cli.imageInspect(ctx, p.imageRef)
	if err != nil {
		if isNotFound(err) {
			return nil, invalid("image %q is not in Podman's local store (%s); pull it (podman pull %s) or build it (openshell sandbox create --from DIR) first",
				p.imageRef, d.cfg.Socket, p.imageRef)
		}
		return nil, d.wrap(err, "inspect image "+p.imageRef)
	}
	// Pin the immutable id: a later re-tag must not change what this sandbox runs.
	p.imageID = img.ID

	// Limits only: the limit, else the request, else the default; a memory request
	// becomes a soft reservation.
	res, err := containers.ReadResources(tmpl.GetResources(), d.cfg.DefaultCPU, d.cfg.DefaultMemory, d.cfg.MinMemory)
	if err != nil {
		return nil, invalid("%v", err)
	}
	p.nanoCPUs, p.memory, p.memoryReq = res.NanoCPUs, res.Memory, res.MemoryReq

	if p.gpus, err = d.gpuDeviceIDs(sb); err != nil {
		return nil, err
	}

	if rc := tmpl.GetPlatformConfig().GetFields()["runtime_class_name"].GetStringValue(); rc != "" {
		if strings.ContainsAny(rc, "/ \t\n") {
			return nil, invalid("runtime_class_name %q: want the name of one of Podman's OCI runtimes (e.g. runc, crun)", rc)
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
	p.labels[drivers.LabelManagedBy] = drivers.ManagedByValue
	p.labels[drivers.LabelSandboxID] = p.id
	p.labels[drivers.LabelSandboxName] = p.name
	p.labels[drivers.LabelImage] = p.imageRef
	if p.workspace != "" {
		p.labels[drivers.LabelWorkspace] = p.workspace
	}

	env := map[string]string{}
	maps.Copy(env, tmpl.GetEnvironment())
	maps.Copy(env, spec.GetEnvironment())
	p.boot = bootstrap.Config{
		Endpoint:     d.cfg.GatewayEndpoint,
		SandboxID:    p.id,
		SandboxName:  p.name,
		TokenFile:    drivers.BootstrapDir + "/token",
		LogLevel:     cmp.Or(spec.GetLogLevel(), d.cfg.LogLevel),
		ImageUser:    img.Config.User,
		ImageWorkdir: img.Config.WorkingDir,
		Main: bootstrap.MainProcessSpec{
			Version: 1,
			Command: spec.GetCommand(),
			TTY:     spec.GetTty(),
			Env:     env,
		},
	}
	if len(d.cfg.CAPEM) > 0 {
		p.boot.CAFile = drivers.BootstrapDir + "/ca.pem"
	}
	if dir := spec.GetGatewaySocketDir(); dir != "" {
		p.socketDir = dir
		p.boot.Endpoint = drivers.GatewaySocketEndpoint()
	}
	return p, nil
}

// spec renders a plan as a libpod create request.
func (d *Driver) spec(p *plan, stateDir string) *specGenerator {
	stop := uint(d.cfg.StopTimeout.Seconds())
	env := map[string]string{}
	for _, kv := range p.boot.Env() {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	s := &specGenerator{
		Name:       containerName(p.name),
		Image:      p.imageID,
		Hostname:   hostname(p.name),
		Entrypoint: []string{drivers.SupervisorPath},
		Command:    []string{},
		// Root so the supervisor can set the sandbox up; it runs the agent as ImageUser.
		User:        "0:0",
		Env:         env,
		Labels:      p.labels,
		StopSignal:  int(syscall.SIGTERM),
		StopTimeout: &stop,
		Mounts: []specMount{
			{Destination: drivers.SupervisorPath, Type: "bind", Source: d.cfg.SupervisorBinary, Options: []string{"ro", "rbind"}},
			{Destination: drivers.BootstrapDir, Type: "bind", Source: stateDir, Options: []string{"ro", "rbind"}},
		},
		CapDrop:         []string{"ALL"},
		CapAdd:          slices.Clone(supervisorCaps),
		NoNewPrivileges: true,
		RestartPolicy:   "no",
		OCIRuntime:      p.runtime,
		// The image's HEALTHCHECK would test the agent, not the supervisor we start.
		HealthConfig: map[string]any{"Test": []string{"NONE"}},
		// Its own user-mode network, for egress (through the supervisor's proxy).
		NetNS: specNamespace{NSMode: "slirp4netns"},
	}
	if p.socketDir != "" {
		// The directory, not the socket: a restarted gateway's new socket shows up.
		// The host loopback stays closed to the sandbox; the host name leads to the
		// host's own address (Podman's host-gateway), where host services a policy
		// allows are found.
		s.Mounts = append(s.Mounts, specMount{Destination: drivers.GatewaySocketMountDir, Type: "bind", Source: p.socketDir, Options: []string{"ro", "rbind"}})
		s.HostAdd = []string{drivers.GatewayHost + ":host-gateway"}
	} else {
		// The gateway listens on the host loopback, which slirp4netns shows at 10.0.2.2.
		s.HostAdd = []string{drivers.GatewayHost + ":" + hostLoopback}
		s.NetworkOptions = map[string][]string{"slirp4netns": {"allow_host_loopback=true"}}
	}
	for _, id := range p.gpus {
		s.Devices = append(s.Devices, map[string]string{"path": id})
	}
	if d.rootless && d.cgroupsV1 {
		// Rootless Podman cannot apply limits on cgroups v1 (allowed by configuration).
		return s
	}
	r := &specResources{}
	if p.nanoCPUs > 0 {
		r.CPU = &struct {
			Quota  int64  `json:"quota,omitempty"`
			Period uint64 `json:"period,omitempty"`
		}{Quota: p.nanoCPUs * cpuPeriod / 1_000_000_000, Period: cpuPeriod}
	}
	if p.memory > 0 || p.memoryReq > 0 {
		r.Memory = &struct {
			Limit       *int64 `json:"limit,omitempty"`
			Reservation *int64 `json:"reservation,omitempty"`
			Swap        *int64 `json:"swap,omitempty"`
		}{}
		if p.memory > 0 {
			lim, swap := p.memory, p.memory // memory+swap = memory: no swap
			r.Memory.Limit, r.Memory.Swap = &lim, &swap
		}
		if p.memoryReq > 0 {
			res := p.memoryReq
			r.Memory.Reservation = &res
		}
	}
	if d.cfg.PidsLimit > 0 {
		r.Pids = &struct {
			Limit int64 `json:"limit"`
		}{Limit: d.cfg.PidsLimit}
	}
	s.Resources = r
	return s
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
