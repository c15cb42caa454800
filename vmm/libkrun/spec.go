// Package libkrun runs microVMs with libkrun, loaded with dlopen at run time so one
// binary works with or without the library installed. krun_start_enter takes over
// the process that calls it, so each VM is a child process: Machine.Start writes an
// EnterSpec to the state dir and starts the enter command (the runner re-executed),
// which calls Enter: it sets up a libkrun context from the spec and enters the VM.
// The guest is the same bundle as every backend's (kernel, initramfs, disks, vsock
// channel); each guest vsock port maps to a host Unix socket; there is no network
// (no TSI, no NIC).
package libkrun

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/openshell/openshell/vmm"
	"github.com/openshell/openshell/vmm/channel"
)

// Kernel formats of krun_set_kernel (libkrun.h KRUN_KERNEL_FORMAT_*).
const (
	KernelFormatRaw uint32 = 0 // arm64 Image
	KernelFormatELF uint32 = 1 // x86_64 vmlinux
)

// DefaultLibrary is the soname dlopen looks for.
const DefaultLibrary = "libkrun.so.1"

// LibraryEnv overrides the library path (a full path or a soname).
const LibraryEnv = "OPENSHELL_LIBKRUN"

// EnterSpec is everything the enter process needs, in the order Enter applies it.
type EnterSpec struct {
	Library       string      `json:"library"`
	LogLevel      uint32      `json:"log_level"`
	VCPUs         uint8       `json:"vcpus"`
	RAMMiB        uint32      `json:"ram_mib"`
	Kernel        string      `json:"kernel"`
	KernelFormat  uint32      `json:"kernel_format"`
	Initramfs     string      `json:"initramfs,omitempty"`
	Cmdline       string      `json:"cmdline"`
	Disks         []DiskSpec  `json:"disks,omitempty"`
	SharedDirs    []ShareSpec `json:"shared_dirs,omitempty"`
	VsockPorts    []PortSpec  `json:"vsock_ports"`
	ConsoleOutput string      `json:"console_output"`
	// EnteredFile is created just before krun_start_enter: Start waits for it, so a
	// configuration error is reported by Start rather than found later.
	EnteredFile string `json:"entered_file"`
}

// DiskSpec is one krun_add_disk.
type DiskSpec struct {
	BlockID  string `json:"block_id"`
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// ShareSpec is one krun_add_virtiofs.
type ShareSpec struct {
	Tag  string `json:"tag"`
	Path string `json:"path"`
}

// PortSpec is one krun_add_vsock_port2: the guest's connections to Port arrive on
// the host Unix socket Path.
type PortSpec struct {
	Port uint32 `json:"port"`
	Path string `json:"path"`
}

// baseCmdline is always on the kernel command line; cfg.Cmdline is appended. The
// implicit console is a virtio console (hvc0).
const baseCmdline = "console=hvc0 panic=-1 quiet"

// vsockPrefix is the host socket prefix inside the state dir (<prefix>_<port>).
const vsockPrefix = "vsock.sock"

// KernelFormat reads the kernel's header: an ELF vmlinux (x86_64) or a raw arm64
// Image; anything else (a compressed bzImage) is refused with the fix.
func KernelFormat(path string) (uint32, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("kernel: %w; run scripts/setup-vm-host.sh or set the kernel path", err)
	}
	defer f.Close()
	hdr := make([]byte, 64)
	if _, err := io.ReadFull(f, hdr); err != nil {
		return 0, fmt.Errorf("kernel %s: header: %w", path, err)
	}
	switch {
	case bytes.Equal(hdr[:4], []byte("\x7fELF")):
		return KernelFormatELF, nil
	case bytes.Equal(hdr[56:60], []byte("ARM\x64")):
		return KernelFormatRaw, nil
	}
	return 0, fmt.Errorf("kernel %s is neither an ELF vmlinux nor an arm64 Image; libkrun needs one of those (scripts/setup-vm-host.sh installs kernel/vmlinux and kernel-arm64/Image)", path)
}

// Plan translates a validated config into the enter spec.
func Plan(cfg vmm.Config, library string, logLevel uint32) (EnterSpec, error) {
	if cfg.VCPUs > 255 {
		return EnterSpec{}, fmt.Errorf("vm %s: VCPUs=%d; libkrun takes at most 255", cfg.Name, cfg.VCPUs)
	}
	format, err := KernelFormat(cfg.Kernel)
	if err != nil {
		return EnterSpec{}, fmt.Errorf("vm %s: %w", cfg.Name, err)
	}
	s := EnterSpec{
		Library:       library,
		LogLevel:      logLevel,
		VCPUs:         uint8(cfg.VCPUs),
		RAMMiB:        uint32(cfg.MemoryMiB),
		Kernel:        cfg.Kernel,
		KernelFormat:  format,
		Initramfs:     cfg.Initrd,
		Cmdline:       strings.TrimSpace(baseCmdline + " " + strings.TrimSpace(cfg.Cmdline)),
		ConsoleOutput: cfg.ConsoleLog,
		EnteredFile:   statePath(cfg, enteredName),
	}
	for i, d := range cfg.Disks {
		s.Disks = append(s.Disks, DiskSpec{BlockID: fmt.Sprintf("disk%d", i), Path: d.Path, ReadOnly: d.ReadOnly})
	}
	for _, d := range cfg.SharedDirs {
		s.SharedDirs = append(s.SharedDirs, ShareSpec{Tag: d.Tag, Path: d.Path})
	}
	prefix := statePath(cfg, vsockPrefix)
	for _, p := range cfg.Channel.Ports {
		s.VsockPorts = append(s.VsockPorts, PortSpec{Port: p, Path: channel.UnixPortPath(prefix, p)})
	}
	return s, nil
}

// ReadEnterSpec loads an enter spec written by Start.
func ReadEnterSpec(path string) (EnterSpec, error) {
	var s EnterSpec
	b, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("libkrun enter spec: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("libkrun enter spec %s: %w", path, err)
	}
	if s.Kernel == "" || s.VCPUs == 0 || s.RAMMiB == 0 || s.ConsoleOutput == "" {
		return s, fmt.Errorf("libkrun enter spec %s: kernel, vcpus, ram_mib and console_output are required", path)
	}
	return s, nil
}
