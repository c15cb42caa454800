package vm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/vm/internal/quantity"
	"github.com/openshell/openshell/drivers/vm/internal/runner"
	"github.com/openshell/openshell/drivers/vm/internal/state"
	"github.com/openshell/openshell/images"
	"github.com/openshell/openshell/images/bundle"
	"github.com/openshell/openshell/internal/gpu"
	"github.com/openshell/openshell/internal/hostcred"
	"github.com/openshell/openshell/supervisor/bootstrap"
	"github.com/openshell/openshell/vmm"
)

// SupervisorBinaryName is the static supervisor put into the initramfs as /init.
const SupervisorBinaryName = "openshell-sandbox"

// Keys accepted in a sandbox's driver_config (public driver_config["vm"]).
const (
	DriverConfigDiskSize = "disk_size" // writable disk size, e.g. "20Gi"
)

// resolved is a validated create request.
type resolved struct {
	image     string
	vcpus     int
	memoryMiB int
	diskBytes int64
	gpu       *gpu.Request // nil: no GPUs
}

// resolve validates a create request and fills defaults.
func (d *Driver) resolve(sb *computev1.DriverSandbox) (*resolved, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("vm sandbox %q: %s: %w", sb.GetId(), fmt.Sprintf(format, a...), drivers.ErrInvalidArgument)
	}
	if err := drivers.ValidateSandbox(sb); err != nil {
		return nil, err
	}
	spec := sb.GetSpec()
	gr, err := d.gpuRequest(sb)
	if err != nil {
		return nil, gpuErr(sb.GetId(), err)
	}
	tpl := spec.GetTemplate()
	r := &resolved{image: tpl.GetImage(), vcpus: d.cfg.CPUs, memoryMiB: d.cfg.MemoryMiB, gpu: gr}
	if r.image == "" {
		r.image = d.cfg.DefaultImage
	}
	if _, err := images.ParseReference(r.image); err != nil {
		return nil, bad("image: %v", err)
	}
	res := tpl.GetResources()
	if q := firstNonEmpty(res.GetCpuLimit(), res.GetCpuRequest()); q != "" {
		n, err := quantity.CPUs(q)
		if err != nil {
			return nil, bad("resources cpu: %v", err)
		}
		r.vcpus = n
	}
	if q := firstNonEmpty(res.GetMemoryLimit(), res.GetMemoryRequest()); q != "" {
		n, err := quantity.MemoryMiB(q)
		if err != nil {
			return nil, bad("resources memory: %v", err)
		}
		if n < 128 {
			return nil, bad("resources memory %q: a VM needs at least 128Mi", q)
		}
		r.memoryMiB = n
	}
	size := d.cfg.DiskSize
	for k, v := range tpl.GetDriverConfig().GetFields() {
		switch k {
		case DriverConfigDiskSize:
			size = v.GetStringValue()
		case DriverConfigGPUDevices: // read by gpuRequest
		default:
			return nil, bad("driver_config key %q is not known to the vm driver (known: %s, %s)", k, DriverConfigDiskSize, DriverConfigGPUDevices)
		}
	}
	b, err := diskBytes(size)
	if err != nil {
		return nil, bad("disk size: %v", err)
	}
	r.diskBytes = b
	return r, nil
}

func firstNonEmpty(a ...string) string {
	for _, s := range a {
		if s != "" {
			return s
		}
	}
	return ""
}

// supervisorBinary finds openshell-sandbox: the flag, next to this executable, PATH.
func (d *Driver) supervisorBinary() (string, error) {
	if d.cfg.SupervisorBinary != "" {
		if _, err := os.Stat(d.cfg.SupervisorBinary); err != nil {
			return "", fmt.Errorf("supervisor binary (--supervisor-binary): %w", err)
		}
		return d.cfg.SupervisorBinary, nil
	}
	return findSupervisor()
}

func findSupervisor() (string, error) {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), SupervisorBinaryName)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath(SupervisorBinaryName); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s not found next to the driver binary or on PATH: build it (make build) or pass --supervisor-binary", SupervisorBinaryName)
}

// progressLogger turns image progress into a few human lines (not one per chunk).
func progressLogger(ref string, report func(string)) func(images.Progress) {
	var last time.Time
	var lastPhase string
	return func(p images.Progress) {
		now := time.Now()
		if p.Phase == lastPhase && now.Sub(last) < 2*time.Second {
			return
		}
		last, lastPhase = now, p.Phase
		switch p.Phase {
		case "pull":
			if p.Total > 0 {
				report(fmt.Sprintf("image %s: pulling %d/%d MiB", ref, p.Done>>20, p.Total>>20))
			} else {
				report(fmt.Sprintf("image %s: pulling %d MiB", ref, p.Done>>20))
			}
		case "convert":
			report(fmt.Sprintf("image %s: building the disk", ref))
		case "cached":
			report(fmt.Sprintf("image %s: cached", ref))
		case "done":
			report(fmt.Sprintf("image %s: ready", ref))
		}
	}
}

// ensureImage has ref's image in the driver's image cache (pulled and converted when
// missing), reporting progress.
func (d *Driver) ensureImage(ctx context.Context, ref string, progress func(string)) (*images.Cache, *images.Entry, error) {
	cache, err := images.NewCache(d.cfg.ImageCacheDir)
	if err != nil {
		return nil, nil, err
	}
	progress("resolving image " + ref)
	entry, err := cache.Ensure(ctx, ref, progressLogger(ref, progress))
	return cache, entry, err
}

// prepare ensures the image, kernel, initramfs and writable disk, and returns the
// runner spec.
func (d *Driver) prepare(ctx context.Context, s *sandbox, res *resolved, spec *computev1.DriverSandboxSpec, progress func(string)) (*runner.Spec, error) {
	if name := spec.GetFromSnapshot(); name != "" {
		return d.prepareFromSnapshot(ctx, s, spec, name, progress)
	}
	cache, entry, err := d.ensureImage(ctx, res.image, progress)
	if err != nil {
		if res.image == DefaultImage {
			return nil, fmt.Errorf("%w (the default image is built by scripts/build-base-image.sh)", err)
		}
		return nil, err
	}
	if _, err := state.Update(s.paths.Dir, func(r *state.Record) error { r.ImageDigest = entry.Digest; return nil }); err != nil {
		return nil, err
	}
	s.stamp("image")
	kernel, initrd, err := d.bootFiles(ctx)
	if err != nil {
		return nil, err
	}
	progress(fmt.Sprintf("creating the %d MiB writable disk", res.diskBytes>>20))
	if err := vmm.CreateWritableDiskContext(ctx, s.paths.Disk, res.diskBytes); err != nil {
		return nil, err
	}
	s.stamp("disk")
	boot, err := d.bootstrapConfig(s, spec, entry, spec.GetGatewaySocketDir())
	if err != nil {
		return nil, err
	}
	egress, err := d.egressPolicy(s.id)
	if err != nil {
		return nil, err
	}
	rs := &runner.Spec{
		SandboxID:   s.id,
		SandboxName: s.name,
		Machine: runner.MachineSpec{
			VCPUs: res.vcpus, MemoryMiB: res.memoryMiB, Kernel: kernel, Initrd: initrd,
			ImageDisk: entry.DiskPath, Disk: s.paths.Disk, Backend: d.cfg.Backend, Accel: d.cfg.Accel, Transport: d.cfg.Transport, CID: s.cid,
		},
		GatewayAddr:      d.cfg.GatewayEndpoint,
		GatewaySocketDir: spec.GetGatewaySocketDir(),
		Egress:           egress,
		Bootstrap:        *boot,
		StopTimeout:      runner.Duration(d.cfg.StopTimeout),
		ImageCacheDir:    cache.Dir(),
		ImageKey:         entry.Key,
	}
	setMachineGPUs(rs, d.gpus.get(s.id))
	return rs, nil
}

// bootFiles finds the kernel and builds (or reuses) the initramfs with the supervisor.
func (d *Driver) bootFiles(ctx context.Context) (kernel, initrd string, err error) {
	kernel, err = bundle.FindKernel(d.cfg.Kernel)
	if err != nil {
		return "", "", err
	}
	mods, err := bundle.ModulesDir(kernel)
	if err != nil {
		return "", "", err
	}
	sup, err := d.supervisorBinary()
	if err != nil {
		return "", "", err
	}
	cacheDir := filepath.Join(d.cfg.StateDir, "initramfs")
	// BuildInitramfs reads and hashes the whole supervisor (~24 MiB) to find its
	// cached archive: remember the answer for the same binary (path, size, mtime) so
	// a create does not pay that again.
	var key string
	if st, err := os.Stat(sup); err == nil {
		key = fmt.Sprintf("%s\x00%s\x00%s\x00%d\x00%d", cacheDir, mods, sup, st.Size(), st.ModTime().UnixNano())
		if p, ok := initramfsMemo.Load(key); ok {
			if _, err := os.Stat(p.(string)); err == nil {
				return kernel, p.(string), nil
			}
		}
	}
	initrd, err = bundle.BuildInitramfs(ctx, sup, mods, cacheDir)
	if err != nil {
		return "", "", err
	}
	if key != "" {
		initramfsMemo.Store(key, initrd)
	}
	return kernel, initrd, nil
}

// initramfsMemo maps a supervisor binary (cache dir, modules dir, path, size, mtime)
// to its built initramfs.
var initramfsMemo sync.Map

// gatewayForGuest is the endpoint URL and CA the guest's supervisor uses. With the
// sandbox's gateway socket (sockDir) the runner bridges the guest's sessions to that
// socket, which speaks plaintext gRPC: no TLS in the guest, where it is the dearest
// part of every transfer under emulation. The host name and port are then only a
// label (the guest dials its vsock port whatever they say).
func (d *Driver) gatewayForGuest(sockDir string) (endpoint string, ca []byte, err error) {
	_, port, _ := net.SplitHostPort(d.cfg.GatewayEndpoint)
	scheme := "http"
	if sockDir == "" && d.cfg.GatewayCAFile != "" {
		b, err := os.ReadFile(d.cfg.GatewayCAFile)
		if err != nil {
			return "", nil, fmt.Errorf("gateway CA (--gateway-ca-file): %w", err)
		}
		ca, scheme = b, "https"
	}
	return scheme + "://" + net.JoinHostPort(d.cfg.GatewayServerName, port), ca, nil
}

// bootstrapConfig is what the guest's supervisor receives on the bootstrap port.
func (d *Driver) bootstrapConfig(s *sandbox, spec *computev1.DriverSandboxSpec, entry *images.Entry, sockDir string) (*bootstrap.Config, error) {
	endpoint, ca, err := d.gatewayForGuest(sockDir)
	if err != nil {
		return nil, err
	}
	env := map[string]string{}
	for _, kv := range entry.Config.Env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	for _, m := range []map[string]string{spec.GetTemplate().GetEnvironment(), spec.GetEnvironment()} {
		for k, v := range m {
			env[k] = v
		}
	}
	return &bootstrap.Config{
		Endpoint:     endpoint,
		SandboxID:    s.id,
		SandboxName:  s.name,
		Token:        spec.GetSandboxToken(),
		CAPEM:        ca,
		LogLevel:     spec.GetLogLevel(),
		ImageUser:    entry.Config.User,
		ImageWorkdir: entry.Config.WorkingDir,
		Main:         bootstrap.MainProcessSpec{Version: 1, Command: spec.GetCommand(), TTY: spec.GetTty(), Env: env},
	}, nil
}

// egressPolicy is the runner's host-side egress configuration for sandbox id: the
// address guard, the extra upstream roots and the runner credential for the
// sandbox's provider values (in the runner's spec on the host, never in the guest's
// bootstrap).
func (d *Driver) egressPolicy(id string) (runner.EgressPolicy, error) {
	p := runner.EgressPolicy{AllowPrivate: d.cfg.EgressAllowPrivate, AllowCIDRs: d.cfg.EgressAllowCIDRs, UpstreamCAFile: d.cfg.EgressCAFile}
	if d.cfg.RunnerKeyFile != "" {
		key, err := hostcred.Load(d.cfg.RunnerKeyFile)
		if err != nil {
			return p, fmt.Errorf("--runner-key-file: %w", err)
		}
		p.RunnerCredential = hostcred.Derive(key, id)
	}
	return p, nil
}

// refreshSpec re-checks the boot files of a stopped sandbox before it boots again: the
// image disk may have been pruned, the kernel or supervisor upgraded.
func (d *Driver) refreshSpec(ctx context.Context, s *sandbox, rec *state.Record) error {
	rs, err := runner.ReadSpec(s.paths.Dir)
	if err != nil {
		return fmt.Errorf("%w (the sandbox was not fully provisioned: delete and create it again): %w", err, drivers.ErrFailedPrecondition)
	}
	if _, err := os.Stat(rs.Machine.ImageDisk); err != nil && rec.Image != "" {
		cache, err := images.NewCache(d.cfg.ImageCacheDir)
		if err != nil {
			return err
		}
		entry, err := cache.Ensure(ctx, rec.Image, nil)
		if err != nil {
			return err
		}
		rs.Machine.ImageDisk, rs.ImageKey = entry.DiskPath, entry.Key
	}
	if kernel, initrd, err := d.bootFiles(ctx); err == nil {
		rs.Machine.Kernel, rs.Machine.Initrd = kernel, initrd
	} else if _, serr := os.Stat(rs.Machine.Initrd); serr != nil {
		return err
	}
	if _, err := os.Stat(s.paths.Disk); err != nil {
		return fmt.Errorf("writable disk %s is gone: %w", s.paths.Disk, errors.Join(err, drivers.ErrFailedPrecondition))
	}
	if err := d.reacquireGPUs(ctx, s, rs); err != nil {
		return err
	}
	// The gateway may have restarted elsewhere since the last boot.
	endpoint, ca, err := d.gatewayForGuest(rs.GatewaySocketDir)
	if err != nil {
		return err
	}
	rs.GatewayAddr, rs.Bootstrap.Endpoint, rs.Bootstrap.CAPEM = d.cfg.GatewayEndpoint, endpoint, ca
	// The runner key or the operator's upstream CA may have changed since.
	if rs.Egress, err = d.egressPolicy(s.id); err != nil {
		return err
	}
	return runner.WriteSpec(s.paths.Dir, rs)
}
