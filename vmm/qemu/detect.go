package qemu

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/openshell/openshell/vmm"
	"github.com/openshell/openshell/vmm/channel"
)

// Accelerators (WithAccel).
const (
	AccelAuto = "auto"
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// TransportAuto lets Start pick the channel transport (WithTransport).
const TransportAuto = "auto"

// AccelInfo is the accelerator DetectAccel picked and why.
type AccelInfo struct {
	Name   string `json:"name"`   // "kvm" or "tcg"
	Reason string `json:"reason"` // human-readable evidence
}

// DetectAccel picks KVM when hardware KVM is usable (vmm.DetectKVM), TCG otherwise.
func DetectAccel() AccelInfo {
	k := vmm.DetectKVM()
	if k.Usable {
		return AccelInfo{Name: AccelKVM, Reason: k.Reason}
	}
	return AccelInfo{Name: AccelTCG, Reason: k.Reason + "; using TCG software emulation (slow)"}
}

// TransportInfo is the transport DetectTransport picked and why.
type TransportInfo struct {
	Name    string `json:"name"`
	Reason  string `json:"reason"`
	Backend string `json:"backend,omitempty"` // vhost-device-vsock path for vhost-user-vsock
}

// DetectTransport resolves "auto": vhost-vsock when /dev/vhost-vsock exists, else
// vhost-user-vsock when the vhost-device-vsock backend is installed, else
// virtio-serial (QEMU always has it).
func DetectTransport() TransportInfo {
	if _, err := os.Stat("/dev/vhost-vsock"); err == nil {
		return TransportInfo{Name: channel.TransportVhostVsock, Reason: "/dev/vhost-vsock exists"}
	}
	if p, err := channel.FindVsockBackend(); err == nil {
		return TransportInfo{Name: channel.TransportVhostUserVsock, Reason: "no /dev/vhost-vsock; vsock backend " + p + " found", Backend: p}
	}
	return TransportInfo{Name: channel.TransportVirtioSerial, Reason: "no /dev/vhost-vsock and no " + channel.VsockBackendName + " (run scripts/setup-vm-host.sh for vsock); using virtio-serial with a stream multiplexer"}
}

// HostCPUKHz is the host CPU clock in kHz from /proc/cpuinfo ("cpu MHz"), 0 when
// unknown. TCG guests need it as tsc_early_khz: without it the kernel sometimes
// fails to calibrate the TSC and hangs.
func HostCPUKHz() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return cpuKHz(b)
}

func cpuKHz(cpuinfo []byte) int {
	for _, line := range strings.Split(string(cpuinfo), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(k) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || mhz <= 0 || mhz > 1e6 {
			return 0
		}
		return int(mhz * 1000)
	}
	return 0
}

// Features of the QEMU backend.
func Features() vmm.Features {
	return vmm.Features{
		Backend:            "qemu",
		Transports:         []string{channel.TransportVhostVsock, channel.TransportVhostUserVsock, channel.TransportVirtioSerial},
		HostDial:           true,
		SharedDirs:         true,
		DevicePassthrough:  true,
		ChildProcess:       true,
		GracefulStop:       true,
		Snapshots:          true,
		SnapshotTransports: snapshotTransports,
	}
}

// Available reports whether the QEMU binary can be found.
func Available(binary string) error {
	if _, err := exec.LookPath(binary); err != nil {
		return fmt.Errorf("%s not found (run scripts/setup-vm-host.sh): %w", binary, err)
	}
	return nil
}
