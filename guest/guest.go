// Package guest is what runs inside the VM before the supervisor proper: the PID 1
// duties of a minimal init (device/proc/sys mounts, kernel modules, the read-only
// image disk and the writable disk joined by overlayfs, switch root) and a clean power
// off when the supervisor returns. The same static binary is /init in the initramfs.
package guest

import (
	"log/slog"
	"os"
	"time"
)

// InitOptions tunes RunPID1; the zero value is what the VM driver sets up.
type InitOptions struct {
	// ModulesDir holds the *.ko files shipped in the initramfs (default /lib/modules).
	ModulesDir string
	// ImageDisk is the read-only image disk (default /dev/vda), ext4.
	ImageDisk string
	// DataDisk is the writable per-sandbox disk (default /dev/vdb), pre-formatted ext4
	// by the host (vmm.CreateWritableDisk). When it is absent the overlay's upper layer
	// is a tmpfs and nothing survives a reboot (logged as a warning).
	DataDisk string
	// DiskWait bounds the wait for the image disk to appear (default 10s).
	DiskWait time.Duration
	// Logger receives progress; default is a text logger on the console.
	Logger *slog.Logger
	// PowerButtonGrace is how long init waits, after the ACPI power button (the host's
	// graceful Stop) made it send SIGTERM to every process including itself, before
	// it powers off anyway (default 5s). run should return on SIGTERM.
	PowerButtonGrace time.Duration
}

func (o InitOptions) withDefaults() InitOptions {
	if o.ModulesDir == "" {
		o.ModulesDir = "/lib/modules"
	}
	if o.ImageDisk == "" {
		o.ImageDisk = "/dev/vda"
	}
	if o.DataDisk == "" {
		o.DataDisk = "/dev/vdb"
	}
	if o.DiskWait == 0 {
		o.DiskWait = 10 * time.Second
	}
	if o.PowerButtonGrace == 0 {
		o.PowerButtonGrace = 5 * time.Second
	}
	return o
}

// IsPID1 reports whether this process is the guest's init.
func IsPID1() bool { return os.Getpid() == 1 }

// Paths inside the initramfs while the root is assembled.
const (
	imageMount = "/mnt/image"
	dataMount  = "/mnt/data"
	newRoot    = "/newroot"
)
