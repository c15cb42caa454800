package qemu

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/images/bundle"
	"github.com/openshell/openshell/internal/testenv"
	"github.com/openshell/openshell/vmm"
)

func useSysfs(t *testing.T, root string) {
	old := sysfsRoot
	sysfsRoot = root
	t.Cleanup(func() { sysfsRoot = old })
}

// The argument list for 1 and 4 GPUs of the recorded 8-GPU host (BAR1 128 GiB +
// BAR3 32 MiB each) and for a GPU with its audio function.
func TestVFIOArgs(t *testing.T) {
	hgx := []string{"0000:03:00.0", "0000:23:00.0", "0000:43:00.0", "0000:63:00.0"}
	for _, tc := range []struct {
		name, tree string
		devs       []string
		accel      string
		want       []string
		ports      int
		hole       uint64
	}{
		{"1 GPU", "hgx8", hgx[:1], "tcg", []string{
			"pcie-root-port,id=vfio0,bus=pcie.0,chassis=16,slot=0,pref64-reserve=274877906944",
			"vfio-pci,host=0000:03:00.0,bus=vfio0,addr=00.0"}, 1, 512 << 30},
		{"4 GPUs kvm", "hgx8", hgx, "kvm", []string{
			"pcie-root-port,id=vfio3,bus=pcie.0,chassis=19,slot=3,pref64-reserve=274877906944",
			"vfio-pci,host=0000:63:00.0,bus=vfio3,addr=00.0", "host,host-phys-bits=on"}, 4, 2 << 40},
		{"GPU and audio", "single", []string{"0000:01:00.0", "0000:01:00.1"}, "tcg", []string{
			"vfio-pci,host=0000:01:00.0,bus=vfio0,addr=00.0,multifunction=on",
			"vfio-pci,host=0000:01:00.1,bus=vfio0,addr=00.1"}, 1, 128 << 30},
	} {
		t.Run(tc.name, func(t *testing.T) {
			useSysfs(t, filepath.Join("..", "..", "internal", "gpu", "testdata", tc.tree, "sys"))
			cfg := vmm.Config{Name: "g", Kernel: "/k", StateDir: "/s", PCIDevices: tc.devs}.WithDefaults()
			args := buildArgs(cfg, plan{accel: tc.accel, transport: "virtio-serial", q35: true, qmpSock: "/s/q"})
			joined := strings.Join(args, " ")
			for _, w := range append(tc.want, "q35,memory-backend=mem", "share=on,prealloc=on",
				fmt.Sprintf("q35-pcihost.pci-hole64-size=%d", tc.hole)) {
				if !strings.Contains(joined, w) {
					t.Errorf("args lack %q:\n%s", w, joined)
				}
			}
			if n := strings.Count(joined, "pcie-root-port,"); n != tc.ports {
				t.Errorf("%d root ports, want %d", n, tc.ports)
			}
			if got := strings.Count(joined, "vfio-pci,host="); got != len(tc.devs) {
				t.Errorf("%d vfio-pci devices, want %d", got, len(tc.devs))
			}
			if tc.accel == "kvm" && slices.Index(args, "host,host-phys-bits=on") < slices.Index(args, "host") {
				t.Error("the phys-bits -cpu must come after the plain one (QEMU takes the last)")
			}
		})
	}
	cfg := vmm.Config{Name: "g", Kernel: "/k", StateDir: "/s"}.WithDefaults()
	if j := strings.Join(buildArgs(cfg, plan{accel: "tcg", transport: "virtio-serial", qmpSock: "/s/q"}), " "); strings.Contains(j, "prealloc") || strings.Contains(j, "hole64") {
		t.Errorf("no devices, yet %s", j)
	}
}

// The real QEMU (TCG) and the real guest kernel take the topology vfioArgs builds,
// with emulated PCIe devices (pci-testdev with a 64-bit prefetchable BAR, scaled to
// fit TCG's 40-bit physical addresses) standing in for vfio-pci, which needs a host
// IOMMU and a GPU: the guest kernel finds every stand-in behind its root port, with its
// BAR assigned inside a 64-bit window of the host bridge, and reports no BAR it could
// not claim or assign. (With this firmware, SeaBIOS, QEMU also widens its default
// window to what the firmware assigned; the sizing matters for UEFI firmware, which
// takes its 64-bit aperture from the host bridge, and for the guest's address width.)
func TestVFIOTopologyInGuest(t *testing.T) {
	bin := testenv.RequireCommand(t, DefaultBinary, "run scripts/setup-vm-host.sh")
	kernel, err := bundle.FindKernel("")
	testenv.Require(t, err == nil, fmt.Sprintf("guest kernel: %v (run scripts/setup-vm-host.sh)", err))
	for _, tc := range []struct {
		name  string
		slots [][]uint64 // per slot, each function's 64-bit BAR (0 = none)
	}{
		{"1 GPU with audio", [][]uint64{{64 << 30, 0}}},
		{"4 GPUs", [][]uint64{{32 << 30}, {32 << 30}, {32 << 30}, {32 << 30}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sys := t.TempDir()
			var devs []string
			bar := map[string]uint64{}
			for i, fns := range tc.slots {
				for j, size := range fns {
					bdf := fmt.Sprintf("0000:%02x:00.%d", 0x10+i, j)
					devs = append(devs, bdf)
					bar[bdf] = size
					res := strings.Repeat("0x0000000000000000 0x0000000000000000 0x0000000000000000\n", 13)
					if size > 0 {
						res = strings.Replace(res, "0x0000000000000000 0x0000000000000000 0x0000000000000000\n",
							fmt.Sprintf("0x0000002000000000 0x%016x 0x000000000014220c\n", 0x2000000000+size-1), 1)
					}
					d := filepath.Join(sys, "bus", "pci", "devices", bdf)
					if err := os.MkdirAll(d, 0o755); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(filepath.Join(d, "resource"), []byte(res), 0o644); err != nil {
						t.Fatal(err)
					}
				}
			}
			useSysfs(t, sys)
			cfg := vmm.Config{Name: "g", Kernel: kernel, StateDir: "/s", PCIDevices: devs, MemoryMiB: 256}.WithDefaults()
			args := vfioArgs(cfg, plan{accel: "tcg"})
			standIn := regexp.MustCompile(`^vfio-pci,host=([0-9a-f:.]+),`)
			var want []uint64 // BAR sizes the guest must show, in slot order
			for i, a := range args {
				if m := standIn.FindStringSubmatch(a); m != nil {
					s := "pci-testdev,"
					if bar[m[1]] > 0 {
						s += fmt.Sprintf("membar=%d,", bar[m[1]])
						want = append(want, bar[m[1]])
					}
					args[i] = s + strings.TrimPrefix(a, m[0])
				}
			}
			console := bootToPanic(t, bin, kernel, args)
			windows, bars, bad := parsePCIConsole(console)
			if len(bad) > 0 {
				t.Errorf("the guest kernel could not place BARs:\n%s", strings.Join(bad, "\n"))
			}
			var got []uint64
			for _, b := range bars {
				if !slices.ContainsFunc(windows, func(w [2]uint64) bool { return b[0] >= w[0] && b[1] <= w[1] }) {
					t.Errorf("BAR %#x-%#x lies outside the host bridge's windows %x", b[0], b[1], windows)
				}
				got = append(got, b[1]-b[0]+1)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("guest sees 64-bit BARs of %v, want %v\nconsole:\n%s", got, want, console)
			}
			t.Logf("guest placed %d BARs (%v) inside %x", len(got), got, windows)
		})
	}
}

var (
	rootWindowRE = regexp.MustCompile(`root bus resource \[mem (0x[0-9a-f]+)-(0x[0-9a-f]+) window\]`)
	bar64RE      = regexp.MustCompile(`pci 0000:[0-9a-f]{2}:00\.[0-7]: BAR \d \[mem (0x[0-9a-f]+)-(0x[0-9a-f]+) 64bit pref\]`)
	badBARRE     = regexp.MustCompile(`(?i)can't claim|no space for|failed to assign|no compatible bridge window`)
)

// parsePCIConsole reads the guest kernel's PCI messages: the host bridge's memory
// windows, the 64-bit prefetchable BARs (first report of each) and failures.
func parsePCIConsole(console string) (windows, bars [][2]uint64, bad []string) {
	seen := map[string]bool{}
	for _, line := range strings.Split(console, "\n") {
		if m := rootWindowRE.FindStringSubmatch(line); m != nil {
			a, _ := strconv.ParseUint(m[1], 0, 64)
			b, _ := strconv.ParseUint(m[2], 0, 64)
			windows = append(windows, [2]uint64{a, b})
		}
		if m := bar64RE.FindStringSubmatch(line); m != nil && !seen[m[0]] {
			seen[m[0]] = true
			a, _ := strconv.ParseUint(m[1], 0, 64)
			b, _ := strconv.ParseUint(m[2], 0, 64)
			bars = append(bars, [2]uint64{a, b})
		}
		if badBARRE.MatchString(line) {
			bad = append(bad, strings.TrimSpace(line))
		}
	}
	return windows, bars, bad
}

// The console checks catch what they look for.
func TestParsePCIConsole(t *testing.T) {
	w, b, bad := parsePCIConsole(`[ 2.3] pci_bus 0000:00: root bus resource [mem 0x1000000000-0x1fffffffff window]
[ 2.4] pci 0000:01:00.0: BAR 2 [mem 0x1000000000-0x1fffffffff 64bit pref]
[ 2.5] pci 0000:02:00.0: BAR 2: no space for [mem size 0x10000000000 64bit pref]
[ 2.6] pci 0000:02:00.0: BAR 2: failed to assign [mem size 0x10000000000 64bit pref]`)
	if len(w) != 1 || len(b) != 1 || b[0][1]-b[0][0]+1 != 64<<30 || len(bad) != 2 {
		t.Errorf("windows %x bars %x bad %q", w, b, bad)
	}
}

// bootToPanic boots the guest kernel without a root file system: it enumerates PCI,
// panics for want of a root, and QEMU exits (-no-reboot). It returns the console.
func bootToPanic(t *testing.T, bin, kernel string, devArgs []string) string {
	t.Helper()
	dir := t.TempDir()
	con := filepath.Join(dir, "console.log")
	khz := HostCPUKHz()
	args := append([]string{"-M", "q35,memory-backend=mem", "-accel", "tcg", "-m", "256M",
		"-object", "memory-backend-memfd,id=mem,size=256M,share=on,prealloc=on",
		"-nographic", "-nodefaults", "-no-user-config", "-no-reboot",
		"-chardev", "file,id=c0,path=" + con, "-serial", "chardev:c0",
		"-kernel", kernel, "-append", fmt.Sprintf("console=ttyS0 panic=-1 loglevel=7 tsc_early_khz=%d", khz)}, devArgs...)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	b, _ := os.ReadFile(con)
	if ctx.Err() != nil || !strings.Contains(string(b), "Kernel panic") {
		t.Fatalf("QEMU: %v %s\nconsole:\n%s", err, out, b)
	}
	return string(b)
}
