package qemu

import (
	"context"
	"encoding/json"
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

	"github.com/digitalocean/go-qemu/qmp"

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

// The real QEMU (TCG) takes the topology vfioArgs builds, with emulated PCIe devices
// (pci-testdev with a 64-bit prefetchable BAR of the GPU's size, scaled to fit TCG's
// 40-bit physical addresses) standing in for vfio-pci, which needs a host IOMMU and a
// real GPU. The firmware must place every BAR inside the 64-bit window; with QEMU's
// default window the same devices end up outside it (what a guest kernel rejects).
func TestVFIOTopologyInQEMU(t *testing.T) {
	bin := testenv.RequireCommand(t, DefaultBinary, "run scripts/setup-vm-host.sh")
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
			cfg := vmm.Config{Name: "g", Kernel: "/k", StateDir: "/s", PCIDevices: devs, MemoryMiB: 256}.WithDefaults()
			args := vfioArgs(cfg, plan{accel: "tcg"})
			standIn := regexp.MustCompile(`^vfio-pci,host=([0-9a-f:.]+),`)
			for i, a := range args {
				if m := standIn.FindStringSubmatch(a); m != nil {
					s := "pci-testdev,"
					if bar[m[1]] > 0 {
						s += fmt.Sprintf("membar=%d,", bar[m[1]])
					}
					args[i] = s + strings.TrimPrefix(a, m[0])
				}
			}
			hole, inside := runTopology(t, bin, args)
			if len(inside) != countNonZero(bar) {
				t.Fatalf("%d BARs placed, want %d", len(inside), countNonZero(bar))
			}
			for b, ok := range inside {
				if !ok {
					t.Errorf("BAR %s lies outside the 64-bit window %v", b, hole)
				}
			}
			// Without the sizing, QEMU's default window: the same BARs fall outside.
			var bare []string
			for i := 0; i < len(args); i++ {
				if args[i] == "-global" && strings.HasPrefix(args[i+1], "q35-pcihost.pci-hole64-size=") {
					i++
					continue
				}
				bare = append(bare, args[i])
			}
			_, inside = runTopology(t, bin, bare)
			out := 0
			for _, ok := range inside {
				if !ok {
					out++
				}
			}
			if out == 0 {
				t.Errorf("with QEMU's default 64-bit window every BAR still fits; the test shows nothing")
			}
			t.Logf("window %#x-%#x holds all %d BARs; QEMU's default window leaves %d outside", hole[0], hole[1], len(inside), out)
		})
	}
}

func countNonZero(m map[string]uint64) int {
	n := 0
	for _, v := range m {
		if v > 0 {
			n++
		}
	}
	return n
}

// runTopology starts QEMU with the devices, lets the firmware assign BARs, and
// reports the 64-bit window and, per 64-bit BAR, whether it lies inside it.
func runTopology(t *testing.T, bin string, devArgs []string) ([2]uint64, map[string]bool) {
	t.Helper()
	dir, err := os.MkdirTemp("", "vfio")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "q.sock")
	args := append([]string{"-M", "q35,memory-backend=mem", "-accel", "tcg", "-m", "256M",
		"-object", "memory-backend-memfd,id=mem,size=256M,share=on,prealloc=on",
		"-nographic", "-nodefaults", "-no-user-config", "-qmp", "unix:" + sock + ",server=on,wait=off"}, devArgs...)
	cmd := exec.Command(bin, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var mon *qmp.SocketMonitor
	for {
		if mon, err = qmp.NewSocketMonitor("unix", sock, 2*time.Second); err == nil {
			if err = mon.Connect(); err == nil {
				break
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("QEMU refused the topology or did not start: %v\n%s\nargs: %v", err, stderr.String(), devArgs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	defer mon.Disconnect()
	run := func(cmd string, a any) json.RawMessage {
		b, _ := json.Marshal(map[string]any{"execute": cmd, "arguments": a})
		if a == nil {
			b, _ = json.Marshal(map[string]any{"execute": cmd})
		}
		out, err := mon.Run(b)
		if err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
		var r struct{ Return json.RawMessage }
		json.Unmarshal(out, &r)
		return r.Return
	}
	var hole [2]uint64
	for i, p := range []string{"pci-hole64-start", "pci-hole64-end"} {
		v, err := strconv.ParseUint(string(run("qom-get", map[string]string{"path": "/machine/q35", "property": p})), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		hole[i] = v
	}
	type region struct {
		Bar     int    `json:"bar"`
		Type    string `json:"type"`
		Address uint64 `json:"address"`
		Size    uint64 `json:"size"`
		Mem64   bool   `json:"mem_type_64"`
	}
	type dev struct {
		Bus, Slot, Function int
		Regions             []region `json:"regions"`
		Bridge              *struct {
			Devices []dev `json:"devices"`
		} `json:"pci_bridge"`
	}
	inside := map[string]bool{}
	// SeaBIOS assigns BARs early; poll until every bridge's devices have addresses.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(300 * time.Millisecond) {
		var buses []struct {
			Devices []dev `json:"devices"`
		}
		json.Unmarshal(run("query-pci", nil), &buses)
		clear(inside)
		unassigned := false
		var walk func([]dev)
		walk = func(ds []dev) {
			for _, d := range ds {
				for _, r := range d.Regions {
					if r.Type == "memory" && r.Mem64 {
						if r.Address == 0 || r.Address == ^uint64(0) {
							unassigned = true
							continue
						}
						inside[fmt.Sprintf("%02x:%02x.%d/%d", d.Bus, d.Slot, d.Function, r.Bar)] = r.Address >= hole[0] && r.Address+r.Size-1 <= hole[1] && r.Address%r.Size == 0
					}
				}
				if d.Bridge != nil {
					walk(d.Bridge.Devices)
				}
			}
		}
		for _, b := range buses {
			walk(b.Devices)
		}
		if !unassigned && len(inside) > 0 || time.Now().After(deadline) {
			break
		}
	}
	return hole, inside
}
