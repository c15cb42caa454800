package qemu

import (
	"cmp"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/openshell/openshell/vmm"
	"github.com/openshell/openshell/vmm/channel"
)

// plan is everything decided before QEMU starts.
type plan struct {
	accel      string // kvm | tcg
	transport  string // resolved, never auto
	q35        bool
	arm64      bool // arm64 guest: qemu-system-aarch64 -M virt
	cpuKHz     int
	cpu        string   // -cpu model
	vhostUser  string   // vhost-user vsock socket (QEMU side)
	serialSock string   // virtio-serial chardev socket
	qmpSock    string   // QMP socket
	fsSockets  []string // virtiofsd sockets, one per shared dir
}

// cpuModel is the -cpu model: want when given (a saved machine's recorded model), else
// the default for the plan's accelerator and architecture.
func cpuModel(p plan, want string) string {
	switch {
	case want != "" && want != CPUUnrecorded:
		return want
	case p.accel == AccelKVM:
		return "host"
	case p.arm64:
		// QEMU's own pointer-authentication algorithm: the architected one (QARMA)
		// costs TCG most of an arm64 boot.
		return "max,pauth-impdef=on"
	case want == CPUUnrecorded:
		return "qemu64" // QEMU's default, before x86 TCG guests got RDRAND
	}
	// RDRAND on the emulated CPU (QEMU answers it from the host's getrandom): the
	// guest kernel trusts it and has its random pool ready at boot. Without it an idle
	// guest's pool initialises only on first use, ~1 s later under TCG, and the
	// supervisor's first TLS/token work waits for that. (arm64's max has RNDR.)
	return "qemu64,+rdrand"
}

// Paths inside the state dir.
const (
	qmpSockName     = "qmp.sock"
	vhostUserName   = "vhu.sock"
	vsockUDSName    = "vsock.sock"
	serialSockName  = "serial.sock"
	qemuLogName     = "qemu.log"
	qemuPidName     = "qemu.pid"
	backendLogName  = "vsock-backend.log"
	backendPidName  = "vsock-backend.pid"
	virtiofsdLogFmt = "virtiofsd-%d.log"
	virtiofsdSock   = "fs-%d.sock"
)

// baseCmdline is always on the kernel command line; cfg.Cmdline is appended.
const baseCmdline = "console=ttyS0 panic=-1 quiet"

// baseCmdlineARM64 is baseCmdline for arm64 guests, whose serial port is a PL011.
const baseCmdlineARM64 = "console=ttyAMA0 panic=-1 quiet"

func kernelCmdline(cfg vmm.Config, p plan) string {
	parts := []string{baseCmdline}
	if p.arm64 {
		parts = []string{baseCmdlineARM64}
	}
	if p.accel == AccelTCG && p.cpuKHz > 0 && !p.arm64 {
		// Without it TCG guests sometimes fail to calibrate the TSC and hang.
		parts = append(parts, "tsc_early_khz="+strconv.Itoa(p.cpuKHz))
		// Not tsc=reliable: it moves a guest with two or more vCPUs off the jiffies
		// clock (qemu64 claims no constant TSC, so the guest marks its TSC unstable
		// and every timer rounds to 4 ms), but with it a guest now and then hung
		// before its init's first line on a loaded host (two full test runs in a row
		// each lost one VM that way; none is known without it).
	}
	if c := strings.TrimSpace(cfg.Cmdline); c != "" {
		parts = append(parts, c)
	}
	return strings.Join(parts, " ")
}

// qemuEscape doubles commas, QEMU's escape inside option values.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

func buildArgs(cfg vmm.Config, p plan) []string {
	dev := func(microvm, pci string) string {
		if p.q35 {
			return pci
		}
		return microvm
	}
	mem := strconv.Itoa(cfg.MemoryMiB)
	var a []string
	if p.arm64 {
		a = append(a, "-M", "virt,memory-backend=mem",
			"-global", "virtio-mmio.force-legacy=false")
	} else if p.q35 {
		a = append(a, "-M", "q35,memory-backend=mem")
	} else {
		a = append(a, "-M", "microvm,x-option-roms=off,rtc=on,memory-backend=mem",
			// vhost-user devices (vsock, virtiofs) refuse legacy virtio.
			"-global", "virtio-mmio.force-legacy=false")
	}
	a = append(a,
		"-accel", p.accel,
		"-smp", strconv.Itoa(cfg.VCPUs),
		"-m", mem+"M",
		// Shared memfd memory: vhost-user backends map guest RAM.
		"-object", memBackend(cfg, mem)+memPrealloc(cfg),
		"-nographic", "-no-reboot", "-nodefaults", "-no-user-config",
		"-chardev", "file,id=con0,path="+qemuEscape(cfg.ConsoleLog),
		"-serial", "chardev:con0",
		"-qmp", "unix:"+qemuEscape(p.qmpSock)+",server=on,wait=off",
		"-kernel", cfg.Kernel,
		"-append", kernelCmdline(cfg, p),
	)
	a = append(a, "-cpu", cmp.Or(p.cpu, cpuModel(p, "")))
	if cfg.Initrd != "" {
		a = append(a, "-initrd", cfg.Initrd)
	}
	for j := range cfg.Disks {
		// -M virt probes virtio-mmio devices from the last added to the first: add
		// the disks in reverse so the guest still sees them in order (vda, vdb, ...).
		i := j
		if p.arm64 {
			i = len(cfg.Disks) - 1 - j
		}
		d := cfg.Disks[i]
		drive := fmt.Sprintf("id=disk%d,file=%s,format=raw,if=none,cache=writeback", i, qemuEscape(d.Path))
		if d.ReadOnly {
			drive += ",readonly=on"
		} else {
			drive += ",discard=unmap"
		}
		a = append(a, "-drive", drive,
			"-device", fmt.Sprintf("%s,drive=disk%d,serial=openshell-disk%d", dev("virtio-blk-device", "virtio-blk-pci"), i, i))
	}
	switch p.transport {
	case channel.TransportVhostVsock:
		a = append(a, "-device", fmt.Sprintf("%s,guest-cid=%d", dev("vhost-vsock-device", "vhost-vsock-pci"), cfg.Channel.CID))
	case channel.TransportVhostUserVsock:
		a = append(a, "-chardev", "socket,id=vsock0,path="+qemuEscape(p.vhostUser),
			"-device", dev("vhost-user-vsock-device", "vhost-user-vsock-pci")+",chardev=vsock0")
	case channel.TransportVirtioSerial:
		a = append(a, "-device", dev("virtio-serial-device", "virtio-serial-pci"),
			"-chardev", "socket,id=ch0,path="+qemuEscape(p.serialSock)+",server=on,wait=off",
			"-device", "virtserialport,chardev=ch0,name=openshell.0")
	}
	for i, s := range cfg.SharedDirs {
		a = append(a, "-chardev", fmt.Sprintf("socket,id=fs%d,path=%s", i, qemuEscape(p.fsSockets[i])),
			"-device", fmt.Sprintf("%s,chardev=fs%d,tag=%s", dev("vhost-user-fs-device", "vhost-user-fs-pci"), i, qemuEscape(s.Tag)))
	}
	a = append(a, vfioArgs(cfg, p)...)
	return a
}

func statePath(cfg vmm.Config, name string) string { return filepath.Join(cfg.StateDir, name) }
