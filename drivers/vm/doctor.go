package vm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"

	"github.com/openshell/openshell/images"
	"github.com/openshell/openshell/images/bundle"
	"github.com/openshell/openshell/vmm/backends"
	"github.com/openshell/openshell/vmm/channel"
	"github.com/openshell/openshell/vmm/qemu"
)

// Missing is one prerequisite the VM driver lacks, with the command that fixes it.
type Missing struct {
	What string `json:"what"`
	Fix  string `json:"fix"`
}

// Report is what `openshell doctor` prints about VM sandboxes on this host.
type Report struct {
	Backend         string `json:"backend"`          // the VMM backend sandboxes would use: qemu, libkrun or vz
	BackendReason   string `json:"backend_reason"`   // why that one (and why not the others)
	Accel           string `json:"accel"`            // qemu: kvm or tcg
	AccelReason     string `json:"accel_reason"`     // evidence for the choice
	Transport       string `json:"transport"`        // vhost-vsock, vhost-user-vsock or virtio-serial
	TransportReason string `json:"transport_reason"` // evidence for the choice
	// Suspend says whether sandboxes here can be suspended (stop --suspend), and why
	// not: the backend's Features.Snapshots and the channel QEMU can migrate.
	Suspend       bool      `json:"suspend"`
	SuspendReason string    `json:"suspend_reason"`
	Kernel        string    `json:"kernel,omitempty"` // guest kernel path ("" = not found)
	Supervisor    string    `json:"supervisor,omitempty"`
	DefaultImage  string    `json:"default_image"`
	Missing       []Missing `json:"missing,omitempty"`
	// Pools are the warm pools with VMs in the state dir (pool.go): idle and booting
	// VMs, and each idle VM's host memory.
	Pools []PoolStatus `json:"pools,omitempty"`
	// Snapshots are the snapshots in the state dir and the disk they hold.
	Snapshots *SnapshotUsage `json:"snapshots,omitempty"`
}

// OK reports whether nothing is missing.
func (r *Report) OK() bool { return len(r.Missing) == 0 }

// Doctor inspects the host for what VM sandboxes need. cfg may be the zero Config
// (defaults are used). It never changes anything.
func Doctor(_ context.Context, cfg Config) Report {
	cfg = cfg.WithDefaults()
	var r Report
	miss := func(what, fix string) { r.Missing = append(r.Missing, Missing{What: what, Fix: fix}) }

	if choice, err := backends.Choose(cfg.Backend); err != nil {
		r.Backend, r.BackendReason = cfg.Backend, err.Error()
		miss("VM backend: "+err.Error(), "use --backend auto, or install what the error names")
	} else {
		r.Backend, r.BackendReason = choice.Name, choice.Reason
	}
	ai := qemu.DetectAccel()
	r.Accel, r.AccelReason = ai.Name, ai.Reason
	switch cfg.Accel {
	case qemu.AccelKVM:
		if ai.Name != qemu.AccelKVM {
			miss("KVM was requested (--accel kvm) but is not usable: "+ai.Reason, "use --accel auto (software emulation, slower) or enable hardware virtualisation")
		}
		r.Accel = qemu.AccelKVM
	case qemu.AccelTCG:
		r.Accel, r.AccelReason = qemu.AccelTCG, "requested with --accel tcg"
	}
	ti := qemu.DetectTransport()
	r.Transport, r.TransportReason = ti.Name, ti.Reason
	if cfg.Transport != "auto" {
		r.Transport, r.TransportReason = cfg.Transport, "requested with --vsock-transport"
		if cfg.Transport == channel.TransportVhostUserVsock {
			if _, err := channel.FindVsockBackend(); err != nil {
				miss("vhost-device-vsock (vsock backend)", "run scripts/setup-vm-host.sh")
			}
		}
		if cfg.Transport == channel.TransportVhostVsock {
			if _, err := os.Stat("/dev/vhost-vsock"); err != nil {
				miss("/dev/vhost-vsock", "modprobe vhost_vsock, or use --vsock-transport auto")
			}
		}
	}

	r.Suspend, r.SuspendReason = suspendable(r.Backend, r.Transport)

	if r.Backend != backends.QEMU {
		// QEMU is the fallback backend; its absence matters only when it is the one.
	} else if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		miss("qemu-system-x86_64", "run scripts/setup-vm-host.sh (installs qemu-system-x86)")
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		miss("mkfs.ext4", "run scripts/setup-vm-host.sh (installs e2fsprogs)")
	}
	if k, err := bundle.FindKernel(cfg.Kernel); err != nil {
		miss("guest kernel: "+err.Error(), "run scripts/setup-vm-host.sh")
	} else {
		r.Kernel = k
		if _, err := bundle.ModulesDir(k); err != nil {
			miss("guest kernel modules: "+err.Error(), "run scripts/setup-vm-host.sh")
		}
	}
	sup := cfg.SupervisorBinary
	if sup == "" {
		sup, _ = findSupervisor()
	}
	if sup == "" {
		miss(SupervisorBinaryName+" (the guest's init and supervisor)", "make build (puts it next to openshell-driver-vm), or pass --supervisor-binary")
	} else if _, err := os.Stat(sup); err != nil {
		miss(SupervisorBinaryName+": "+err.Error(), "make build, or fix --supervisor-binary")
	} else {
		r.Supervisor = sup
	}
	r.DefaultImage = cfg.DefaultImage
	if ref, err := images.ParseReference(cfg.DefaultImage); err != nil {
		miss("default image: "+err.Error(), "fix --default-image")
	} else if ref.Transport == images.TransportOCILayout {
		if _, err := os.Stat(ref.Path + "/index.json"); err != nil {
			fix := "pass --default-image with an image you have"
			if strings.HasPrefix(cfg.DefaultImage, "oci-layout:/var/lib/openshell/images/base") {
				fix = "run scripts/build-base-image.sh"
			}
			miss(fmt.Sprintf("default image %s (no OCI layout at %s)", cfg.DefaultImage, ref.Path), fix)
		}
	}
	r.Pools = PoolsOnDisk(context.Background(), cfg.StateDir, cfg.Pools)
	if cfg.StateDir != "" {
		if u, err := SnapshotsOnDisk(context.Background(), cfg.StateDir); err == nil {
			r.Snapshots = &u
		}
	}
	return r
}

// suspendable says whether VMs of backend with channel transport can be saved.
func suspendable(backend, transport string) (bool, string) {
	if backend != backends.QEMU {
		return false, "the " + backend + " backend cannot save VMs (Features.Snapshots is false)"
	}
	f := qemu.Features()
	if slices.Contains(f.SnapshotTransports, transport) {
		return true, "qemu with the " + transport + " channel"
	}
	return false, "QEMU cannot migrate the " + transport + " channel: set [drivers.vm] vsock_transport = \"virtio-serial\" (or load vhost_vsock) to suspend sandboxes"
}
