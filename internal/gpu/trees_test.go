package gpu

import (
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/openshell/openshell/internal/gpu/gputest"
)

// The recorded sysfs trees under testdata/ were written from the descriptions below
// (go test -run TestRecordedTrees -update-trees ./internal/gpu/); the test checks the
// committed trees still match them. Each host has the shape of a real one: devices
// under their bridges, relative symlinks for driver and iommu_group, the resource
// file with 13 regions.
var updateTrees = flag.Bool("update-trees", false, "rewrite internal/gpu/testdata from the descriptions")

type barDesc struct {
	idx   int
	size  uint64
	flags uint64
}

const (
	barMem32   = 0x40200
	barMem64PF = 0x14220c
	barIO      = 0x40101
)

type fnDesc struct {
	bdf, parent    string
	class          uint32
	vendor, device uint16
	driver         string
	numa           int
	group          string
	bars           []barDesc
	drm            []string
}

type procDesc struct {
	pid  int
	comm string
	fds  []string
}

type treeDesc struct {
	name     string
	fns      []fnDesc
	drivers  []string
	noGroups bool // the host kernel has no IOMMU: iommu_groups is empty
	procs    map[string][]procDesc
	nvidia   map[string]int // BDF -> /dev/nvidiaN minor (procfs information)
}

func gpuBARs(bar1 uint64) []barDesc {
	return []barDesc{{0, 16 << 20, barMem32}, {1, bar1, barMem64PF}, {3, 32 << 20, barMem64PF}}
}

func recordedTrees() []treeDesc {
	hostBridge := fnDesc{bdf: "0000:00:00.0", class: 0x060000, vendor: 0x8086, device: 0x09a2, group: "0", numa: 0}
	single := treeDesc{name: "single", drivers: []string{"nvidia", "snd_hda_intel", "pcieport", "igb", VFIODriver},
		fns: []fnDesc{
			hostBridge,
			{bdf: "0000:00:01.0", class: 0x060400, vendor: 0x8086, device: 0x1901, driver: "pcieport", group: "1"},
			{bdf: "0000:01:00.0", parent: "0000:00:01.0", class: 0x030000, vendor: 0x10de, device: 0x2684, driver: "nvidia", group: "13",
				bars: append(gpuBARs(32<<30), barDesc{5, 128, barIO}), drm: []string{"card0", "renderD128"}},
			{bdf: "0000:01:00.1", parent: "0000:00:01.0", class: 0x040300, vendor: 0x10de, device: 0x22ba, driver: "snd_hda_intel", group: "13",
				bars: []barDesc{{0, 16 << 10, barMem32}}},
			{bdf: "0000:00:1c.0", class: 0x060400, vendor: 0x8086, device: 0xa33c, driver: "pcieport", group: "7"},
			{bdf: "0000:02:00.0", parent: "0000:00:1c.0", class: 0x020000, vendor: 0x8086, device: 0x1533, driver: "igb", group: "8",
				bars: []barDesc{{0, 1 << 20, barMem32}}},
		},
		procs: map[string][]procDesc{
			"proc-busy": {{pid: 1, comm: "init", fds: []string{"/dev/null"}}, {pid: 4242, comm: "Xorg", fds: []string{"/dev/tty7", "/dev/dri/card0"}}},
		},
	}

	hgx := treeDesc{name: "hgx8", drivers: []string{"nvidia", "pcieport", "mlx5_core", VFIODriver}}
	hgx.fns = append(hgx.fns, hostBridge)
	group := 20
	next := func() string { group++; return fmt.Sprint(group) }
	for i := range 8 {
		numa := i / 4
		rp := fmt.Sprintf("0000:%02x:01.0", i*0x20)
		up := fmt.Sprintf("0000:%02x:00.0", i*0x20+0x01)
		down := fmt.Sprintf("0000:%02x:00.0", i*0x20+0x02)
		gpuBDF := fmt.Sprintf("0000:%02x:00.0", i*0x20+0x03)
		hgx.fns = append(hgx.fns,
			fnDesc{bdf: rp, class: 0x060400, vendor: 0x8086, device: 0x352a, driver: "pcieport", group: next(), numa: numa},
			fnDesc{bdf: up, parent: rp, class: 0x060400, vendor: 0x1000, device: 0xc030, driver: "pcieport", group: next(), numa: numa},
			fnDesc{bdf: down, parent: up, class: 0x060400, vendor: 0x1000, device: 0xc030, driver: "pcieport", group: next(), numa: numa},
			fnDesc{bdf: gpuBDF, parent: down, class: 0x030200, vendor: 0x10de, device: 0x2330, driver: "nvidia", group: next(), numa: numa,
				bars: gpuBARs(128 << 30)},
		)
	}
	for i := range 4 {
		// NVSwitches: class "bridge, other" (0x0680) behind the first switch, each in
		// its own group; they are neither GPUs nor PCI-to-PCI bridges.
		hgx.fns = append(hgx.fns, fnDesc{bdf: fmt.Sprintf("0000:%02x:00.0", 0x04+i), parent: "0000:02:00.0", class: 0x068000,
			vendor: 0x10de, device: 0x22a3, driver: "nvidia", group: next(), bars: []barDesc{{0, 32 << 20, barMem32}}})
	}
	hgx.fns = append(hgx.fns, fnDesc{bdf: "0000:05:00.0", parent: "0000:02:00.0", class: 0x020700, vendor: 0x15b3, device: 0x1021,
		driver: "mlx5_core", group: next(), bars: []barDesc{{0, 32 << 20, barMem64PF}}})
	// 0000:04:00.0 is an NVSwitch; the ConnectX sits at 0000:05:00.0 above, so move the
	// last NVSwitch out of its way.
	for i := range hgx.fns {
		if hgx.fns[i].bdf == "0000:05:00.0" && hgx.fns[i].class == 0x068000 {
			hgx.fns[i].bdf = "0000:08:00.0"
		}
	}

	shared := treeDesc{name: "shared-nic", drivers: []string{"nvidia", "pcieport", "ixgbe", "snd_hda_intel", VFIODriver},
		fns: []fnDesc{
			hostBridge,
			{bdf: "0000:00:1c.0", class: 0x060400, vendor: 0x8086, device: 0xa110, driver: "pcieport", group: "9"},
			// A GPU and a NIC behind a bridge without ACS: one group for all three.
			{bdf: "0000:03:00.0", parent: "0000:00:1c.0", class: 0x030000, vendor: 0x10de, device: 0x1eb8, driver: "nvidia", group: "9",
				bars: gpuBARs(256 << 20)},
			{bdf: "0000:04:00.0", parent: "0000:00:1c.0", class: 0x020000, vendor: 0x8086, device: 0x10fb, driver: "ixgbe", group: "9",
				bars: []barDesc{{0, 512 << 10, barMem64PF}}},
			{bdf: "0000:00:01.0", class: 0x060400, vendor: 0x8086, device: 0x1901, driver: "pcieport", group: "2"},
			{bdf: "0000:05:00.0", parent: "0000:00:01.0", class: 0x030000, vendor: 0x10de, device: 0x2204, driver: "nvidia", group: "14",
				bars: gpuBARs(256 << 20)},
			{bdf: "0000:05:00.1", parent: "0000:00:01.0", class: 0x040300, vendor: 0x10de, device: 0x1aef, driver: "snd_hda_intel", group: "14"},
		},
	}

	noIOMMU := treeDesc{name: "no-iommu", noGroups: true, drivers: []string{"amdgpu", "pcieport", "snd_hda_intel"},
		fns: []fnDesc{
			{bdf: "0000:00:00.0", class: 0x060000, vendor: 0x1022, device: 0x1480},
			{bdf: "0000:00:03.1", class: 0x060400, vendor: 0x1022, device: 0x1483, driver: "pcieport"},
			{bdf: "0000:0b:00.0", parent: "0000:00:03.1", class: 0x030000, vendor: 0x1002, device: 0x744c, driver: "amdgpu",
				bars: gpuBARs(16 << 30), drm: []string{"card1", "renderD129"}},
			{bdf: "0000:0b:00.1", parent: "0000:00:03.1", class: 0x040300, vendor: 0x1002, device: 0xab30, driver: "snd_hda_intel"},
		},
	}

	// The one GPU host seen so far: a VM with one H200 handed to it, no virtual IOMMU.
	h200 := treeDesc{name: "h200", noGroups: true, drivers: []string{"nvidia", "virtio-pci", "ata_piix"},
		fns: []fnDesc{
			{bdf: "0000:00:00.0", class: 0x060000, vendor: 0x8086, device: 0x1237, numa: -1},
			{bdf: "0000:00:01.0", class: 0x060100, vendor: 0x8086, device: 0x7000, numa: -1},
			{bdf: "0000:00:01.1", class: 0x010180, vendor: 0x8086, device: 0x7010, driver: "ata_piix", numa: -1},
			{bdf: "0000:00:03.0", class: 0x020000, vendor: 0x1af4, device: 0x1000, driver: "virtio-pci", numa: -1,
				bars: []barDesc{{0, 32, barIO}, {4, 16 << 10, barMem64PF}}},
			{bdf: "0000:00:06.0", class: 0x030200, vendor: 0x10de, device: 0x2335, driver: "nvidia", numa: -1,
				bars: gpuBARs(256 << 30)},
		},
		nvidia: map[string]int{"0000:00:06.0": 0},
	}
	return []treeDesc{single, hgx, shared, noIOMMU, h200}
}

// writeTree materialises d under dir (dir/sys, dir/proc*).
func writeTree(t *testing.T, d treeDesc, dir string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	sys := filepath.Join(dir, "sys")
	paths := map[string]string{}
	byBDF := map[string]fnDesc{}
	for _, f := range d.fns {
		byBDF[f.bdf] = f
	}
	var devPath func(bdf string) string
	devPath = func(bdf string) string {
		if p, ok := paths[bdf]; ok {
			return p
		}
		f := byBDF[bdf]
		parent := filepath.Join(sys, "devices", "pci"+bdf[:7])
		if f.parent != "" {
			parent = devPath(f.parent)
		}
		paths[bdf] = filepath.Join(parent, bdf)
		return paths[bdf]
	}
	rel := func(from, to string) string {
		r, err := filepath.Rel(from, to)
		must(err)
		return r
	}
	write := func(p, s string) {
		must(os.MkdirAll(filepath.Dir(p), 0o755))
		must(os.WriteFile(p, []byte(s), 0o644))
	}
	for _, drv := range d.drivers {
		for _, a := range []string{"bind", "unbind", "new_id", "remove_id"} {
			write(filepath.Join(sys, "bus", "pci", "drivers", drv, a), "")
		}
	}
	write(filepath.Join(sys, "bus", "pci", "drivers_probe"), "")
	// Git keeps no empty directory: a host without IOMMU has no iommu_groups entries,
	// and the reader treats a missing directory the same.
	must(os.MkdirAll(filepath.Join(sys, "bus", "pci", "devices"), 0o755))
	addr := uint64(0xe0000000)
	for _, f := range d.fns {
		p := devPath(f.bdf)
		must(os.MkdirAll(p, 0o755))
		write(filepath.Join(p, "class"), fmt.Sprintf("0x%06x\n", f.class))
		write(filepath.Join(p, "vendor"), fmt.Sprintf("0x%04x\n", f.vendor))
		write(filepath.Join(p, "device"), fmt.Sprintf("0x%04x\n", f.device))
		write(filepath.Join(p, "numa_node"), fmt.Sprintf("%d\n", f.numa))
		write(filepath.Join(p, "driver_override"), "(null)\n")
		var res strings.Builder
		for i := range 13 {
			line := "0x0000000000000000 0x0000000000000000 0x0000000000000000\n"
			for _, b := range f.bars {
				if b.idx == i {
					addr = (addr + b.size - 1) &^ (b.size - 1)
					line = fmt.Sprintf("0x%016x 0x%016x 0x%016x\n", addr, addr+b.size-1, b.flags)
					addr += b.size
				}
			}
			res.WriteString(line)
		}
		write(filepath.Join(p, "resource"), res.String())
		for i, n := range f.drm {
			write(filepath.Join(p, "drm", n, "dev"), fmt.Sprintf("226:%d\n", i*128))
		}
		link := filepath.Join(sys, "bus", "pci", "devices", f.bdf)
		must(os.Symlink(rel(filepath.Dir(link), p), link))
		if f.driver != "" {
			must(os.Symlink(rel(p, filepath.Join(sys, "bus", "pci", "drivers", f.driver)), filepath.Join(p, "driver")))
		}
		if f.group != "" && !d.noGroups {
			g := filepath.Join(sys, "kernel", "iommu_groups", f.group)
			must(os.MkdirAll(filepath.Join(g, "devices"), 0o755))
			must(os.Symlink(rel(p, g), filepath.Join(p, "iommu_group")))
			must(os.Symlink(rel(filepath.Join(g, "devices"), p), filepath.Join(g, "devices", f.bdf)))
		}
	}
	for name, ps := range d.procs {
		for _, pr := range ps {
			pd := filepath.Join(dir, name, fmt.Sprint(pr.pid))
			write(filepath.Join(pd, "comm"), pr.comm+"\n")
			must(os.MkdirAll(filepath.Join(pd, "fd"), 0o755))
			for i, fd := range pr.fds {
				must(os.Symlink(fd, filepath.Join(pd, "fd", fmt.Sprint(i))))
			}
		}
	}
	for bdf, minor := range d.nvidia {
		write(filepath.Join(dir, "proc", "driver", "nvidia", "gpus", bdf, "information"),
			fmt.Sprintf("Model: \t\t NVIDIA H200\nIRQ:   \t\t 0\nGPU UUID: \t GPU-00000000-0000-0000-0000-000000000000\nDevice Minor: \t %d\nBus Location: \t %s\n", minor, bdf))
	}
}

// snapshot is every path of a tree with its mode and content or link target.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		r, _ := filepath.Rel(dir, p)
		switch {
		case e.Type()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			out[r] = "-> " + l
			return err
		case e.IsDir():
			out[r] = "dir"
		default:
			b, err := os.ReadFile(p)
			out[r] = string(b)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestRecordedTrees(t *testing.T) {
	for _, d := range recordedTrees() {
		dst := filepath.Join("testdata", d.name)
		if *updateTrees {
			if err := os.RemoveAll(dst); err != nil {
				t.Fatal(err)
			}
			writeTree(t, d, dst)
			continue
		}
		want := t.TempDir()
		writeTree(t, d, want)
		got, exp := snapshot(t, dst), snapshot(t, want)
		for p, v := range exp {
			if got[p] != v {
				t.Errorf("%s: %s is %q, the description says %q (regenerate with -update-trees)", d.name, p, got[p], v)
			}
		}
		for p := range got {
			if _, ok := exp[p]; !ok {
				t.Errorf("%s: %s is not in the description", d.name, p)
			}
		}
	}
}

func copyTree(t *testing.T, name string) string { return gputest.CopyTree(t, name) }
