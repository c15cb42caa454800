package vm

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"time"

	"github.com/openshell/openshell/drivers/vm/internal/quantity"
	"github.com/openshell/openshell/drivers/vm/internal/state"
	"github.com/openshell/openshell/images"
	"github.com/openshell/openshell/internal/hostcred"
	"github.com/openshell/openshell/vmm/backends"
)

// DefaultImage is the project's base sandbox image, built offline by
// scripts/build-base-image.sh.
const DefaultImage = "oci-layout:/var/lib/openshell/images/base:latest"

// Defaults.
const (
	DefaultCPUs        = 2
	DefaultMemoryMiB   = 2048
	DefaultDiskSize    = "8Gi"
	DefaultStopTimeout = 30 * time.Second
)

// Config configures the VM driver (flags of openshell-driver-vm).
type Config struct {
	// StateDir holds one directory per sandbox (sb/<id>) and the image cache.
	StateDir string `json:"state_dir"`
	// GatewayEndpoint is the gateway's TCP host:port; guest sessions are bridged there.
	GatewayEndpoint string `json:"gateway_endpoint"`
	// GatewayCAFile is the PEM CA the supervisor trusts for the gateway ("" = plaintext).
	GatewayCAFile string `json:"gateway_ca_file,omitempty"`
	// GatewayServerName is the TLS name the guest uses for the gateway.
	GatewayServerName string `json:"gateway_server_name,omitempty"`

	DefaultImage string `json:"default_image"`
	CPUs         int    `json:"cpus"`
	MemoryMiB    int    `json:"memory_mib"`
	// DiskSize is the writable disk's size (Kubernetes quantity, e.g. 8Gi).
	DiskSize    string        `json:"disk_size"`
	StopTimeout time.Duration `json:"stop_timeout"`

	Kernel string `json:"kernel,omitempty"` // "" = the kernel installed by scripts/setup-vm-host.sh
	// Backend is the VMM backend (--backend): auto (vz on macOS, libkrun where its
	// library and hardware KVM are present, else qemu), qemu, libkrun or vz.
	Backend   string `json:"backend"`
	Accel     string `json:"accel"`           // auto, kvm, tcg
	Transport string `json:"vsock_transport"` // auto, vhost-vsock, vhost-user-vsock, virtio-serial

	// SupervisorBinary is the static openshell-sandbox put into the initramfs as /init
	// ("" = next to the driver binary, then PATH).
	SupervisorBinary string `json:"supervisor_binary,omitempty"`
	// ImageCacheDir defaults to <StateDir>/images.
	ImageCacheDir string `json:"image_cache_dir,omitempty"`

	// EgressAllowPrivate lets guests' egress reach loopback, private and link-local
	// addresses of the host's networks (refused by default).
	EgressAllowPrivate bool `json:"egress_allow_private,omitempty"`
	// EgressAllowCIDRs are exceptions to that refusal (e.g. a LAN package mirror).
	EgressAllowCIDRs []string `json:"egress_allow_cidrs,omitempty"`
	// EgressCAFile is a PEM bundle the runners trust, besides the system roots, for
	// the TLS connections they make on behalf of guests (requests to a provider's
	// bound hosts, where the runner puts the real credential in): a private CA.
	EgressCAFile string `json:"egress_ca_file,omitempty"`
	// RunnerKeyFile is the gateway's runner key (package hostcred): each runner gets
	// the credential of its own sandbox derived from it, with which it fetches the
	// sandbox's provider values; "" = runners get none (guests get no credentials).
	RunnerKeyFile string `json:"runner_key_file,omitempty"`

	// ResumeAfterHostReboot starts again, when the driver starts, every sandbox that
	// was running when the host went down (power loss, reboot): not stopped by the
	// user, no recorded failure, its runner gone and the host's boot id changed since
	// the runner was started. The writable disk is kept, so /sandbox is as it was.
	// nil means true; false leaves such sandboxes Ready=False reason VMExited until
	// they are started by hand (`openshell sandbox start NAME`).
	ResumeAfterHostReboot *bool `json:"resume_after_host_reboot,omitempty"`
	// BootID returns the host's boot id (nil = state.HostBootID, reading
	// /proc/sys/kernel/random/boot_id). Tests inject one to simulate a host reboot.
	BootID func() (string, error) `json:"-"`

	// RunnerCommand is argv[0..] of the runner re-exec; "--state-dir DIR" is appended.
	// Default: [<this executable>, "runner"].
	RunnerCommand []string `json:"runner_command,omitempty"`
	// RunnerEnv is extra environment for runner processes.
	RunnerEnv []string `json:"runner_env,omitempty"`

	// GPUMaxSandboxes caps how many sandboxes of this host hold passed-through GPUs at
	// once (0 = no cap; counted host-wide, across drivers).
	GPUMaxSandboxes int `json:"gpu_max_sandboxes,omitempty"`
	// GPUStateDir holds the host-wide GPU lock and journal ("" = /var/lib/openshell/gpu).
	GPUStateDir string `json:"gpu_state_dir,omitempty"`
	// GPUSysfs is the sysfs root GPUs are found in ("" = /sys); tests use recorded trees.
	GPUSysfs string `json:"gpu_sysfs,omitempty"`
	// GPUWrite stands in for the kernel's sysfs writes in tests (nil = the real ones).
	GPUWrite func(path string, data []byte) error `json:"-"`

	// Pools are warm pools of VMs booted ahead of time, by name (`[drivers.vm.pools.NAME]`
	// in the gateway config, --pools on the driver): a create whose image, cpus,
	// memory and disk size match a pool takes one of its VMs (see pool.go).
	Pools map[string]PoolConfig `json:"pools,omitempty"`
}

// PoolConfig is one warm pool: Size VMs of this shape kept booted and waiting.
type PoolConfig struct {
	// Size is how many idle VMs the pool keeps (0 = none, the pool is off).
	Size int `json:"size"`
	// Image is the sandbox image ("" = default_image).
	Image string `json:"image,omitempty"`
	// CPUs, MemoryMiB and DiskSize are the VM's shape (0/"" = the driver's defaults).
	CPUs      int    `json:"cpus,omitempty"`
	MemoryMiB int    `json:"memory_mib,omitempty"`
	DiskSize  string `json:"disk_size,omitempty"`
}

// poolName is what a pool may be called (it is part of its VMs' ids).
var poolName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

// validatePools names each bad pool field and its fix.
func (c Config) validatePools() []error {
	var errs []error
	names := make([]string, 0, len(c.Pools))
	for n := range c.Pools {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p := c.Pools[n]
		f := "pools." + n
		if p.Size < 0 || p.Size > maxPoolSize {
			errs = append(errs, fmt.Errorf("%s.size %d: use 0 (pool off) to %d", f, p.Size, maxPoolSize))
		}
		errs = append(errs, c.validatePool(f, n, p)...)
	}
	return errs
}

// maxPoolSize bounds a pool's idle VMs.
const maxPoolSize = 64

// validatePool checks pool n's name and shape (not its size); f prefixes each
// error's field ("pools.NAME" in the config).
func (c Config) validatePool(f, n string, p PoolConfig) []error {
	var errs []error
	if !poolName.MatchString(n) {
		errs = append(errs, fmt.Errorf("%s: pool name %q: use 1-32 lowercase letters, digits or '-', starting with a letter or digit", f, n))
	}
	if p.CPUs < 0 || p.CPUs > 256 {
		errs = append(errs, fmt.Errorf("%s.cpus %d: use 1..256 (or leave it out for cpus = %d)", f, p.CPUs, c.CPUs))
	}
	if p.MemoryMiB != 0 && p.MemoryMiB < 128 {
		errs = append(errs, fmt.Errorf("%s.memory_mib %d: too small for a VM: use at least 128 (or leave it out for memory_mib = %d)", f, p.MemoryMiB, c.MemoryMiB))
	}
	if p.DiskSize != "" {
		if _, err := diskBytes(p.DiskSize); err != nil {
			errs = append(errs, fmt.Errorf("%s.disk_size: %w", f, err))
		}
	}
	img := p.Image
	if img == "" {
		img = c.DefaultImage
	}
	if ref, err := images.ParseReference(img); err != nil {
		errs = append(errs, fmt.Errorf("%s.image: %w", f, err))
	} else if ref.Transport == images.TransportOCILayout {
		if _, err := os.Stat(filepath.Join(ref.Path, "index.json")); err != nil {
			errs = append(errs, fmt.Errorf("%s.image %q: unknown image: no OCI layout at %s: build it (scripts/build-base-image.sh for the base image) or name an image you have", f, img, ref.Path))
		}
	}
	return errs
}

// resumeAfterHostReboot is the effective ResumeAfterHostReboot (default true).
func (c Config) resumeAfterHostReboot() bool {
	return c.ResumeAfterHostReboot == nil || *c.ResumeAfterHostReboot
}

// DefaultStateDir is $XDG_STATE_HOME/openshell/vm, else ~/.local/state/openshell/vm.
func DefaultStateDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "openshell", "vm")
	}
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		return filepath.Join(os.TempDir(), "openshell-vm-"+strconv.Itoa(os.Getuid()))
	}
	return filepath.Join(home, ".local", "state", "openshell", "vm")
}

// WithDefaults returns c with empty fields filled.
func (c Config) WithDefaults() Config {
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir()
	}
	if c.DefaultImage == "" {
		c.DefaultImage = DefaultImage
	}
	if c.CPUs == 0 {
		c.CPUs = DefaultCPUs
	}
	if c.MemoryMiB == 0 {
		c.MemoryMiB = DefaultMemoryMiB
	}
	if c.DiskSize == "" {
		c.DiskSize = DefaultDiskSize
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = DefaultStopTimeout
	}
	if c.Backend == "" {
		c.Backend = backends.Auto
	}
	if c.Accel == "" {
		c.Accel = "auto"
	}
	if c.Transport == "" {
		c.Transport = "auto"
	}
	if c.GatewayServerName == "" {
		c.GatewayServerName = "host.openshell.internal"
	}
	if c.ImageCacheDir == "" {
		c.ImageCacheDir = filepath.Join(c.StateDir, "images")
	}
	if c.ResumeAfterHostReboot == nil {
		on := true
		c.ResumeAfterHostReboot = &on
	}
	if c.BootID == nil {
		c.BootID = state.HostBootID
	}
	return c
}

// Validate names the first bad field and how to fix it (call after WithDefaults).
func (c Config) Validate() error {
	var errs []error
	// No length limit on state_dir: the sockets live in a short runtime dir (state.RunDir).
	switch {
	case c.StateDir == "":
		errs = append(errs, errors.New("state_dir (--state-dir) is empty"))
	case !filepath.IsAbs(c.StateDir):
		errs = append(errs, fmt.Errorf("state_dir (--state-dir) %q must be an absolute path", c.StateDir))
	}
	if c.GatewayEndpoint == "" {
		errs = append(errs, errors.New("gateway_endpoint (--gateway-endpoint) is empty: give the gateway's host:port, e.g. 127.0.0.1:17670"))
	} else if _, port, err := net.SplitHostPort(c.GatewayEndpoint); err != nil || port == "" {
		errs = append(errs, fmt.Errorf("gateway_endpoint (--gateway-endpoint) %q is not host:port", c.GatewayEndpoint))
	}
	if c.GatewayCAFile != "" {
		if _, err := os.Stat(c.GatewayCAFile); err != nil {
			errs = append(errs, fmt.Errorf("gateway_ca_file (--gateway-ca-file): %w", err))
		}
	}
	if c.CPUs < 1 || c.CPUs > 256 {
		errs = append(errs, fmt.Errorf("cpus (--cpus) %d: use 1..256", c.CPUs))
	}
	if c.MemoryMiB < 128 {
		errs = append(errs, fmt.Errorf("memory_mib (--memory-mib) %d: use at least 128", c.MemoryMiB))
	}
	if _, err := diskBytes(c.DiskSize); err != nil {
		errs = append(errs, fmt.Errorf("disk_size (--disk-size): %w", err))
	}
	if c.StopTimeout < 0 {
		errs = append(errs, fmt.Errorf("stop_timeout (--stop-timeout) %v: must not be negative", c.StopTimeout))
	}
	if err := backends.Validate(c.Backend); err != nil {
		errs = append(errs, fmt.Errorf("backend (--backend): %w", err))
	}
	switch c.Accel {
	case "auto", "kvm", "tcg":
	default:
		errs = append(errs, fmt.Errorf("accel (--accel) %q: use auto, kvm or tcg", c.Accel))
	}
	switch c.Transport {
	case "auto", "vhost-vsock", "vhost-user-vsock", "virtio-serial":
	default:
		errs = append(errs, fmt.Errorf("vsock_transport (--vsock-transport) %q: use auto, vhost-vsock, vhost-user-vsock or virtio-serial", c.Transport))
	}
	if c.DefaultImage == "" {
		errs = append(errs, errors.New("default_image (--default-image) is empty"))
	}
	for i, cidr := range c.EgressAllowCIDRs {
		if _, err := netip.ParsePrefix(cidr); err != nil {
			errs = append(errs, fmt.Errorf("egress_allow_cidrs[%d] (--egress-allow-cidr) %q: %w", i, cidr, err))
		}
	}
	if c.EgressCAFile != "" {
		if b, err := os.ReadFile(c.EgressCAFile); err != nil {
			errs = append(errs, fmt.Errorf("egress_ca_file (--egress-ca-file): %w", err))
		} else if !x509.NewCertPool().AppendCertsFromPEM(b) {
			errs = append(errs, fmt.Errorf("egress_ca_file (--egress-ca-file) %s holds no PEM certificate: give a PEM CA bundle", c.EgressCAFile))
		}
	}
	if c.GPUMaxSandboxes < 0 {
		errs = append(errs, fmt.Errorf("gpu_max_sandboxes (--gpu-max-sandboxes) %d: use 0 (no cap) or more", c.GPUMaxSandboxes))
	}
	if c.RunnerKeyFile != "" {
		if _, err := hostcred.Load(c.RunnerKeyFile); err != nil {
			errs = append(errs, fmt.Errorf("runner_key_file (--runner-key-file): %w", err))
		}
	}
	errs = append(errs, c.validatePools()...)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("vm driver config: %w", err)
	}
	return nil
}

// diskBytes parses a disk size quantity into bytes (at least 64 MiB).
func diskBytes(s string) (int64, error) {
	mib, err := quantity.MemoryMiB(s)
	if err != nil {
		return 0, err
	}
	if mib < 64 {
		return 0, fmt.Errorf("disk size %q: use at least 64Mi", s)
	}
	return int64(mib) << 20, nil
}
