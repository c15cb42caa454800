package qemu

import (
	"fmt"
	"math/bits"
	"os"
	"path/filepath"

	"github.com/openshell/openshell/internal/gpu"
	"github.com/openshell/openshell/vmm"
)

// Passthrough of host PCI devices (GPUs) with VFIO on q35. Each physical device (a
// slot: the GPU and its audio function) sits on its own PCIe root port, as on real
// hardware, so the guest driver sees a normal PCIe link. Large-BAR GPUs (an H200's
// BAR1 is 256 GiB) need a 64-bit PCI window sized from their BARs: UEFI firmware takes
// its 64-bit aperture from the host bridge's window (QEMU's default is 32 GiB), and
// each root port reserves room for its device. (SeaBIOS places BARs anywhere and QEMU
// widens the window to match.) The guest must also address that window: under KVM it
// takes the host CPU's physical address width. VFIO pins all guest memory for DMA, so
// it is allocated up front.

// sysfsRoot is where the host's PCI devices are read from (BAR sizes).
var sysfsRoot = gpu.DefaultSysfs

// q35DefaultHole64 is QEMU's own q35 64-bit PCI window: never go below it.
const q35DefaultHole64 = 32 << 30

// vfioSlot is one physical device: its functions go on one root port.
type vfioSlot struct {
	fns  []string
	mmio uint64 // 64-bit prefetchable memory of all its functions
}

func vfioSlots(bdfs []string, mmio func(string) uint64) []vfioSlot {
	var out []vfioSlot
	index := map[string]int{}
	for _, b := range bdfs {
		key := gpu.Slot(b)
		i, ok := index[key]
		if !ok {
			i = len(out)
			index[key] = i
			out = append(out, vfioSlot{})
		}
		out[i].fns = append(out[i].fns, b)
		out[i].mmio += mmio(b)
	}
	return out
}

// deviceMMIO is the 64-bit prefetchable BAR memory of a host function (0 if unknown:
// the firmware then sizes the port from the BARs alone).
func deviceMMIO(bdf string) uint64 {
	b, err := os.ReadFile(filepath.Join(sysfsRoot, "bus", "pci", "devices", bdf, "resource"))
	if err != nil {
		return 0
	}
	bars, err := gpu.ParseResource(b)
	if err != nil {
		return 0
	}
	return gpu.Function{BARs: bars}.MMIO64()
}

// pow2 rounds n up to a power of two (BAR windows are naturally aligned).
func pow2(n uint64) uint64 {
	if n <= 1 {
		return n
	}
	return 1 << (64 - bits.LeadingZeros64(n-1))
}

// memPrealloc is appended to the guest memory backend: VFIO pins every page anyway,
// and preallocating makes a short host fail at start rather than mid-run.
func memPrealloc(cfg vmm.Config) string {
	if len(cfg.PCIDevices) > 0 {
		return ",prealloc=on"
	}
	return ""
}

// vfioArgs places cfg.PCIDevices on q35: a root port per slot, its functions on it.
func vfioArgs(cfg vmm.Config, p plan) []string {
	if len(cfg.PCIDevices) == 0 {
		return nil
	}
	var a []string
	var hole uint64
	for i, s := range vfioSlots(cfg.PCIDevices, deviceMMIO) {
		port := fmt.Sprintf("vfio%d", i)
		rp := fmt.Sprintf("pcie-root-port,id=%s,bus=pcie.0,chassis=%d,slot=%d", port, 16+i, i)
		if s.mmio > 0 {
			r := pow2(s.mmio)
			rp += fmt.Sprintf(",pref64-reserve=%d", r)
			hole += r
		}
		a = append(a, "-device", rp)
		for j, fn := range s.fns {
			d := fmt.Sprintf("vfio-pci,host=%s,bus=%s,addr=00.%d", fn, port, j)
			if j == 0 && len(s.fns) > 1 {
				d += ",multifunction=on"
			}
			a = append(a, "-device", d)
		}
	}
	// The window holds every port's naturally aligned reservation; double it so the
	// firmware can align them without running out.
	hole = max(q35DefaultHole64, pow2(hole)*2)
	a = append(a, "-global", fmt.Sprintf("q35-pcihost.pci-hole64-size=%d", hole))
	if p.accel == "kvm" {
		// The guest must be able to address that window: take the host CPU's physical
		// address width rather than QEMU's default of 40 bits (1 TiB).
		a = append(a, "-cpu", "host,host-phys-bits=on")
	}
	return a
}
