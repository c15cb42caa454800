package doctor

import (
	"context"
	"fmt"

	"github.com/openshell/openshell/internal/gpu"
)

// The GPU section: what `openshell gpu list` says, one finding per GPU. It reads
// sysfs only, so both binaries carry it (the CLI runs it itself when
// openshell-gateway is missing).
func init() {
	Register("gpu", func(context.Context) []Finding { return GPUFindings(gpu.DefaultSysfs, gpu.DefaultProc) })
}

// GPUFindings inspects the GPUs under sysfs (and /proc for IOMMU state).
func GPUFindings(sysfs, proc string) []Finding {
	inv, err := gpu.New(gpu.Config{Sysfs: sysfs, Proc: proc}).Inventory()
	if err != nil {
		if inv, err = gpu.Scan(gpu.ScanOptions{Sysfs: sysfs, Proc: proc}); err != nil {
			return []Finding{{Check: "gpu", Status: Warn, Detail: err.Error(), Fix: "check that sysfs is mounted at " + sysfs}}
		}
	}
	if len(inv.GPUs) == 0 {
		return []Finding{{Check: "gpu", Status: Info, Detail: "no GPU on this host"}}
	}
	var out []Finding
	for _, g := range inv.GPUs {
		f := Finding{Check: "gpu " + g.BDF, Status: OK,
			Detail: fmt.Sprintf("%04x:%04x %s on %s, can be passed through to a VM sandbox", g.Vendor, g.Device, g.ClassName(), orDash(g.Driver))}
		if !g.Passthrough {
			f.Status = Warn
			f.Detail = fmt.Sprintf("%04x:%04x on %s: %s", g.Vendor, g.Device, orDash(g.Driver), g.Reasons[0].Message)
			f.Fix = g.Reasons[0].Fix
		}
		out = append(out, f)
	}
	if inv.IOMMU && !inv.VFIO {
		out = append(out, Finding{Check: "gpu vfio-pci", Status: Warn, Detail: "the vfio-pci driver is not loaded", Fix: "modprobe vfio-pci"})
	}
	return out
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
