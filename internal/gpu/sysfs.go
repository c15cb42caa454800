// Package gpu finds the host's GPUs in sysfs, decides which can be passed through to a
// VM (IOMMU groups), hands them out exclusively across sandboxes under a host-wide
// lock, moves them to vfio-pci and back with a crash journal, and reads the CDI specs
// that container engines use for GPUs. Every sysfs path is taken relative to a root
// parameter so that recorded trees drive the tests.
package gpu

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// DefaultSysfs is where the kernel mounts sysfs.
const DefaultSysfs = "/sys"

// VFIODriver is the kernel driver that hands a PCI function to a VMM.
const VFIODriver = "vfio-pci"

// PCI class codes (the 24-bit class file: base, sub-class, prog-if).
const (
	classBaseDisplay = 0x03   // VGA 0x0300xx, XGA 0x0301xx, 3D 0x0302xx, other 0x0380xx
	classPCIBridge   = 0x0604 // PCI-to-PCI bridge (root ports, switch ports)
	classSubtractive = 0x0609 // semi-transparent PCI-to-PCI bridge
)

var bdfRE = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$`)

// ParseBDF checks a PCI address (domain:bus:device.function, e.g. 0000:01:00.0) and
// returns it in the kernel's lower-case form; the domain may be left out (01:00.0).
func ParseBDF(s string) (string, error) {
	b := strings.ToLower(strings.TrimSpace(s))
	if strings.Count(b, ":") == 1 {
		b = "0000:" + b
	}
	if !bdfRE.MatchString(b) {
		return "", fmt.Errorf("%q is not a PCI address: write domain:bus:device.function, e.g. 0000:01:00.0 (see `openshell gpu list`)", s)
	}
	return b, nil
}

// Slot is the BDF without its function: functions of one slot are one device.
func Slot(bdf string) string {
	if i := strings.LastIndexByte(bdf, '.'); i > 0 {
		return bdf[:i]
	}
	return bdf
}

// BAR is one memory region of a PCI function, from its sysfs resource file.
type BAR struct {
	Index       int    `json:"index"`
	Size        uint64 `json:"size"`
	Is64        bool   `json:"is_64bit,omitempty"`
	Prefetch    bool   `json:"prefetchable,omitempty"`
	IsIOPortBAR bool   `json:"io_port,omitempty"`
}

// Resource flags (include/linux/ioport.h).
const (
	ioresourceIO       = 0x00000100
	ioresourceMem      = 0x00000200
	ioresourcePrefetch = 0x00002000
	ioresourceMem64    = 0x00100000
)

// Function is one PCI function as sysfs shows it.
type Function struct {
	BDF        string `json:"bdf"`
	Class      uint32 `json:"class"`
	Vendor     uint16 `json:"vendor"`
	Device     uint16 `json:"device"`
	Driver     string `json:"driver,omitempty"` // "" = no driver bound
	Override   string `json:"driver_override,omitempty"`
	NUMANode   int    `json:"numa_node"`
	IOMMUGroup string `json:"iommu_group,omitempty"` // "" = not in any group
	BARs       []BAR  `json:"bars,omitempty"`
	// DRMNodes are the function's /dev/dri nodes (card0, renderD128).
	DRMNodes []string `json:"drm_nodes,omitempty"`
}

// IsGPU reports a display-class function (VGA, XGA, 3D controller, other display).
func (f Function) IsGPU() bool { return f.Class>>16 == classBaseDisplay }

// IsBridge reports a PCI-to-PCI bridge (root port, switch port): it stays with the
// host when a device behind it is passed through.
func (f Function) IsBridge() bool {
	c := f.Class >> 8
	return c == classPCIBridge || c == classSubtractive
}

// MMIO64 is the 64-bit prefetchable memory the function's BARs need: what a guest's
// 64-bit PCI window and the function's root port must hold.
func (f Function) MMIO64() uint64 {
	var n uint64
	for _, b := range f.BARs {
		if b.Is64 && b.Prefetch {
			n += b.Size
		}
	}
	return n
}

// ClassName is a short human name for the class code.
func (f Function) ClassName() string {
	switch f.Class >> 8 {
	case 0x0300:
		return "VGA controller"
	case 0x0302:
		return "3D controller"
	case 0x0380:
		return "display controller"
	case 0x0403:
		return "audio device"
	case 0x0200:
		return "Ethernet controller"
	case 0x0207:
		return "InfiniBand controller"
	case 0x0604:
		return "PCI bridge"
	case 0x0680:
		return "bridge"
	case 0x0c03:
		return "USB controller"
	case 0x0600:
		return "host bridge"
	}
	return fmt.Sprintf("class %06x", f.Class)
}

// sysfs reads PCI state below a sysfs root; it never writes.
type sysfs struct{ root string }

func (s sysfs) devDir(bdf string) string { return filepath.Join(s.root, "bus", "pci", "devices", bdf) }
func (s sysfs) driverDir(drv string) string {
	return filepath.Join(s.root, "bus", "pci", "drivers", drv)
}
func (s sysfs) groupsDir() string { return filepath.Join(s.root, "kernel", "iommu_groups") }

// functions lists every PCI function, sorted by address.
func (s sysfs) functions() ([]Function, error) {
	ents, err := os.ReadDir(filepath.Join(s.root, "bus", "pci", "devices"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("sysfs %s has no bus/pci/devices: is it a sysfs root (default /sys)? %w", s.root, err)
	}
	if err != nil {
		return nil, err
	}
	var out []Function
	for _, e := range ents {
		if !bdfRE.MatchString(e.Name()) {
			continue
		}
		f, err := s.function(e.Name())
		if err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	slices.SortFunc(out, func(a, b Function) int { return strings.Compare(a.BDF, b.BDF) })
	return out, nil
}

// function reads one PCI function; fs.ErrNotExist when there is none at bdf.
func (s sysfs) function(bdf string) (Function, error) {
	dir := s.devDir(bdf)
	f := Function{BDF: bdf, NUMANode: -1}
	if _, err := os.Stat(dir); err != nil {
		return f, err
	}
	var err error
	if f.Class, err = readHex[uint32](filepath.Join(dir, "class"), 24); err != nil {
		return f, err
	}
	if f.Vendor, err = readHex[uint16](filepath.Join(dir, "vendor"), 16); err != nil {
		return f, err
	}
	if f.Device, err = readHex[uint16](filepath.Join(dir, "device"), 16); err != nil {
		return f, err
	}
	f.Driver = linkBase(filepath.Join(dir, "driver"))
	f.IOMMUGroup = linkBase(filepath.Join(dir, "iommu_group"))
	if b, err := os.ReadFile(filepath.Join(dir, "driver_override")); err == nil {
		if o := strings.TrimSpace(string(b)); o != "(null)" {
			f.Override = o
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "numa_node")); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			f.NUMANode = n
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "resource")); err == nil {
		f.BARs, err = ParseResource(b)
		if err != nil {
			return f, fmt.Errorf("%s/resource: %w", dir, err)
		}
	}
	if ents, err := os.ReadDir(filepath.Join(dir, "drm")); err == nil {
		for _, e := range ents {
			if n := e.Name(); strings.HasPrefix(n, "card") || strings.HasPrefix(n, "renderD") {
				f.DRMNodes = append(f.DRMNodes, n)
			}
		}
	}
	return f, nil
}

// groupMembers lists the functions of IOMMU group g.
func (s sysfs) groupMembers(g string) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(s.groupsDir(), g, "devices"))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if bdfRE.MatchString(e.Name()) {
			out = append(out, e.Name())
		}
	}
	slices.Sort(out)
	return out, nil
}

// iommuOn reports whether the kernel put any device in an IOMMU group: with the IOMMU
// off (or absent) the iommu_groups directory is empty or missing.
func (s sysfs) iommuOn() bool {
	ents, err := os.ReadDir(s.groupsDir())
	return err == nil && len(ents) > 0
}

// hasDriver reports whether driver drv is registered (its module loaded).
func (s sysfs) hasDriver(drv string) bool {
	_, err := os.Stat(s.driverDir(drv))
	return err == nil
}

func linkBase(p string) string {
	t, err := os.Readlink(p)
	if err != nil {
		return ""
	}
	return filepath.Base(t)
}

type hexInt interface{ ~uint16 | ~uint32 }

func readHex[T hexInt](p string, bits int) (T, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(string(b)), "0x"), 16, bits)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not a hex number: %w", p, strings.TrimSpace(string(b)), err)
	}
	return T(v), nil
}

// ParseResource parses a PCI function's sysfs resource file: one line per region,
// "start end flags" in hex; lines 0-5 are the BARs (6 the expansion ROM, further
// lines bridge windows, not BARs). Empty regions are left out.
func ParseResource(b []byte) ([]BAR, error) {
	var out []BAR
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for i := 0; sc.Scan(); i++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 3 {
			return nil, fmt.Errorf("line %d: %q: want three hex numbers (start end flags)", i+1, line)
		}
		var v [3]uint64
		for j, fld := range fields {
			n, err := strconv.ParseUint(strings.TrimPrefix(fld, "0x"), 16, 64)
			if err != nil {
				return nil, fmt.Errorf("line %d: %q is not a hex number", i+1, fld)
			}
			v[j] = n
		}
		if i > 5 || v[1] == 0 && v[0] == 0 {
			continue
		}
		if v[1] < v[0] {
			return nil, fmt.Errorf("line %d: end %#x before start %#x", i+1, v[1], v[0])
		}
		out = append(out, BAR{
			Index: i, Size: v[1] - v[0] + 1,
			Is64: v[2]&ioresourceMem64 != 0, Prefetch: v[2]&ioresourcePrefetch != 0,
			IsIOPortBAR: v[2]&ioresourceIO != 0 && v[2]&ioresourceMem == 0,
		})
	}
	return out, sc.Err()
}
