package gpu

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// DefaultProc is where the kernel mounts procfs.
const DefaultProc = "/proc"

// Reason codes for a GPU that cannot be passed through.
const (
	ReasonNoIOMMU     = "no-iommu"
	ReasonNoGroup     = "no-iommu-group"
	ReasonGroupShared = "iommu-group-shared"
	ReasonInUse       = "in-use"
	ReasonHeld        = "held"
)

// Reason says why a GPU cannot be passed through, and how to fix it.
type Reason struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Fix     string `json:"fix"`
}

func (r Reason) String() string { return r.Message + "; fix: " + r.Fix }

// Member is another function of a GPU's IOMMU group.
type Member struct {
	BDF    string `json:"bdf"`
	Class  string `json:"class"`
	Driver string `json:"driver,omitempty"`
	// Role: "function" (another function of the GPU's own slot: passed through with
	// it), "bridge" (stays with the host), "other" (blocks passthrough).
	Role string `json:"role"`
}

// Process is a host process holding one of a GPU's device nodes open.
type Process struct {
	PID  int    `json:"pid"`
	Comm string `json:"comm"`
	Node string `json:"node"`
}

// GPU is one display-class function with what passthrough needs to know.
type GPU struct {
	Function
	Members []Member `json:"iommu_group_members,omitempty"`
	// Passthrough is true when the GPU can be given to a VM now.
	Passthrough bool      `json:"passthrough"`
	Reasons     []Reason  `json:"reasons,omitempty"`
	HeldBy      string    `json:"held_by,omitempty"`
	UsedBy      []Process `json:"used_by,omitempty"`
}

// Functions is the GPU and the functions of its slot in its group, in the order
// they move to vfio-pci (and to the VM).
func (g GPU) Functions() []string {
	out := []string{g.BDF}
	for _, m := range g.Members {
		if m.Role == "function" {
			out = append(out, m.BDF)
		}
	}
	return out
}

// Inventory is every GPU of a host.
type Inventory struct {
	Sysfs string `json:"sysfs"`
	IOMMU bool   `json:"iommu"`
	// VFIO is whether the vfio-pci driver is loaded (modprobe vfio-pci).
	VFIO bool  `json:"vfio_pci_loaded"`
	GPUs []GPU `json:"gpus"`
}

// Find returns the GPU at bdf.
func (inv *Inventory) Find(bdf string) (*GPU, bool) {
	for i := range inv.GPUs {
		if inv.GPUs[i].BDF == bdf {
			return &inv.GPUs[i], true
		}
	}
	return nil, false
}

// ScanOptions locate the host's sysfs and procfs ("" = /sys, /proc).
type ScanOptions struct {
	Sysfs string
	Proc  string
	// Held maps a function's address to the sandbox holding it (from the journal).
	Held map[string]string
}

// Scan reads the host's GPUs and judges each for passthrough. It only reads.
func Scan(o ScanOptions) (*Inventory, error) {
	if o.Sysfs == "" {
		o.Sysfs = DefaultSysfs
	}
	if o.Proc == "" {
		o.Proc = DefaultProc
	}
	s := sysfs{root: o.Sysfs}
	fns, err := s.functions()
	if err != nil {
		return nil, err
	}
	byBDF := map[string]Function{}
	for _, f := range fns {
		byBDF[f.BDF] = f
	}
	inv := &Inventory{Sysfs: o.Sysfs, IOMMU: s.iommuOn(), VFIO: s.hasDriver(VFIODriver), GPUs: []GPU{}}
	procs := openDeviceNodes(o.Proc)
	for _, f := range fns {
		if !f.IsGPU() {
			continue
		}
		g := GPU{Function: f}
		if f.IOMMUGroup != "" {
			members, err := s.groupMembers(f.IOMMUGroup)
			if err != nil {
				return nil, fmt.Errorf("IOMMU group %s of %s: %w", f.IOMMUGroup, f.BDF, err)
			}
			for _, b := range members {
				if b == f.BDF {
					continue
				}
				mf := byBDF[b]
				m := Member{BDF: b, Class: mf.ClassName(), Driver: mf.Driver, Role: "other"}
				switch {
				case mf.IsBridge():
					m.Role = "bridge"
				case Slot(b) == Slot(f.BDF):
					m.Role = "function"
				}
				g.Members = append(g.Members, m)
			}
		}
		judge(&g, inv.IOMMU, procs, nvidiaMinor(o.Proc, f.BDF), o.Held)
		inv.GPUs = append(inv.GPUs, g)
	}
	return inv, nil
}

// judge fills Passthrough, Reasons, HeldBy and UsedBy.
func judge(g *GPU, iommu bool, procs map[string][]Process, minor int, held map[string]string) {
	switch {
	case !iommu:
		g.Reasons = append(g.Reasons, Reason{ReasonNoIOMMU,
			"the host has no IOMMU enabled (/sys/kernel/iommu_groups is empty), so no device can be given to a VM",
			"enable VT-d/AMD-Vi in the firmware and add intel_iommu=on iommu=pt (Intel) or amd_iommu=on iommu=pt (AMD) to the kernel command line, then reboot"})
	case g.IOMMUGroup == "":
		g.Reasons = append(g.Reasons, Reason{ReasonNoGroup,
			"the GPU is in no IOMMU group (the IOMMU does not cover its PCI segment)",
			"check the firmware's VT-d/AMD-Vi and DMAR tables for this slot, or use another slot"})
	}
	var others []string
	for _, m := range g.Members {
		if m.Role == "other" {
			d := m.Driver
			if d == "" {
				d = "no driver"
			}
			others = append(others, fmt.Sprintf("%s (%s, %s)", m.BDF, m.Class, d))
		}
	}
	if len(others) > 0 {
		g.Reasons = append(g.Reasons, Reason{ReasonGroupShared,
			fmt.Sprintf("IOMMU group %s also holds %s, which is not a bridge; VFIO can only give a VM a whole group", g.IOMMUGroup, strings.Join(others, ", ")),
			"move the GPU or the other device to a slot in another IOMMU group, or enable ACS on the upstream bridge in the firmware"})
	}
	nodes := slices.Clone(g.DRMNodes)
	for i := range nodes {
		nodes[i] = "/dev/dri/" + nodes[i]
	}
	if minor >= 0 {
		nodes = append(nodes, "/dev/nvidia"+strconv.Itoa(minor))
	}
	if g.IOMMUGroup != "" {
		// Another VMM (or a sandbox's QEMU) has the group open through VFIO.
		nodes = append(nodes, "/dev/vfio/"+g.IOMMUGroup)
	}
	for _, n := range nodes {
		g.UsedBy = append(g.UsedBy, procs[n]...)
	}
	if len(g.UsedBy) > 0 {
		var ps []string
		for _, p := range g.UsedBy {
			ps = append(ps, fmt.Sprintf("%d (%s) has %s open", p.PID, p.Comm, p.Node))
		}
		g.Reasons = append(g.Reasons, Reason{ReasonInUse,
			"in use by a host process: " + strings.Join(ps, ", "),
			"stop those processes (or the display manager) before giving the GPU to a sandbox"})
	}
	for _, b := range g.Functions() {
		if owner, ok := held[b]; ok {
			g.HeldBy = owner
			g.Reasons = append(g.Reasons, Reason{ReasonHeld,
				fmt.Sprintf("held by sandbox %s", owner),
				"delete that sandbox, or pick another GPU"})
			break
		}
	}
	g.Passthrough = len(g.Reasons) == 0
}

// openDeviceNodes maps each /dev path that some process holds open to those processes.
func openDeviceNodes(proc string) map[string][]Process {
	out := map[string][]Process{}
	ents, err := os.ReadDir(proc)
	if err != nil {
		return out
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fdDir := filepath.Join(proc, e.Name(), "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue
		}
		var comm string
		seen := map[string]bool{}
		for _, fd := range fds {
			t, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
			if err != nil || seen[t] || !(strings.HasPrefix(t, "/dev/dri/") || strings.HasPrefix(t, "/dev/nvidia") || strings.HasPrefix(t, "/dev/vfio/")) {
				continue
			}
			seen[t] = true
			if comm == "" {
				b, _ := os.ReadFile(filepath.Join(proc, e.Name(), "comm"))
				comm = strings.TrimSpace(string(b))
			}
			out[t] = append(out[t], Process{PID: pid, Comm: comm, Node: t})
		}
	}
	return out
}

// nvidiaMinor is the /dev/nvidiaN minor of an NVIDIA GPU bound to the proprietary
// driver (its procfs information file), or -1.
func nvidiaMinor(proc, bdf string) int {
	f, err := os.Open(filepath.Join(proc, "driver", "nvidia", "gpus", bdf, "information"))
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "Device Minor" {
			if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
				return n
			}
		}
	}
	return -1
}

// Check tells whether r could ever be met on this host, whoever holds what now: each
// named device exists and is a GPU, the count is not above the host's GPUs, and the
// host has an IOMMU. Errors wrap ErrInvalid or ErrUnavailable (no IOMMU).
func (inv *Inventory) Check(r Request) error {
	if err := CheckRequest(r); err != nil {
		return err
	}
	for _, d := range r.Devices {
		b, _ := ParseBDF(d)
		if _, ok := inv.Find(b); !ok {
			return notAGPU(inv.Sysfs, b)
		}
	}
	if len(r.Devices) == 0 && r.Count > len(inv.GPUs) {
		return fmt.Errorf("gpu count %d: this host has %d GPU(s) (see `openshell gpu list`): %w", r.Count, len(inv.GPUs), ErrInvalid)
	}
	if !inv.IOMMU {
		return fmt.Errorf("%s: %w", Reason{ReasonNoIOMMU, "this host has no IOMMU enabled, so no GPU can be given to a VM",
			"enable VT-d/AMD-Vi in the firmware and add intel_iommu=on iommu=pt (Intel) or amd_iommu=on iommu=pt (AMD) to the kernel command line, then reboot"}, ErrUnavailable)
	}
	return nil
}

// notAGPU explains why bdf is not one of the host's GPUs.
func notAGPU(sysfsRoot, bdf string) error {
	f, err := (sysfs{root: sysfsRoot}).function(bdf)
	if err != nil {
		return fmt.Errorf("gpu device %s: no PCI device at that address on this host (see `openshell gpu list`): %w", bdf, ErrInvalid)
	}
	return fmt.Errorf("gpu device %s: it is a %s (%04x:%04x), not a GPU (see `openshell gpu list`): %w", bdf, f.ClassName(), f.Vendor, f.Device, ErrInvalid)
}
