package qemu

import (
	"slices"
	"strings"
	"testing"

	"github.com/openshell/openshell/vmm"
	"github.com/openshell/openshell/vmm/channel"
)

func TestBuildArgs(t *testing.T) {
	cfg := vmm.Config{
		Name: "a", Kernel: "/k/vmlinux", Initrd: "/k/initrd", Cmdline: "openshell.x=1",
		Disks:      []vmm.Disk{{Path: "/d/img,1.ext4", ReadOnly: true}, {Path: "/d/data.ext4"}},
		SharedDirs: []vmm.SharedDir{{Tag: "work", Path: "/w"}},
		StateDir:   "/s",
	}.WithDefaults()
	for _, tc := range []struct {
		name        string
		p           plan
		want, avoid []string
	}{
		{"microvm tcg vhost-user", plan{accel: "tcg", transport: channel.TransportVhostUserVsock, cpuKHz: 2596150, vhostUser: "/s/vhu.sock", qmpSock: "/s/qmp.sock", fsSockets: []string{"/s/fs-0.sock"}},
			[]string{"microvm,", "virtio-mmio.force-legacy=false", "tsc_early_khz=2596150", "vhost-user-vsock-device,chardev=vsock0",
				"file=/d/img,,1.ext4,format=raw,if=none,cache=writeback,readonly=on", "virtio-blk-device,drive=disk1", "discard=unmap",
				"vhost-user-fs-device,chardev=fs0,tag=work", "console=ttyS0 panic=-1 quiet tsc_early_khz=2596150 openshell.x=1", "-cpu qemu64,+rdrand"},
			[]string{"-cpu host", "q35", "virtserialport"}},
		{"q35 kvm serial", plan{accel: "kvm", transport: channel.TransportVirtioSerial, q35: true, cpuKHz: 2596150, serialSock: "/s/serial.sock", qmpSock: "/s/qmp.sock", fsSockets: []string{"/s/fs-0.sock"}},
			[]string{"q35,memory-backend=mem", "virtio-serial-pci", "virtserialport,chardev=ch0,name=openshell.0", "virtio-blk-pci,drive=disk0", "-cpu", "host"},
			[]string{"tsc_early_khz", "microvm", "vhost-user-vsock", "rdrand"}},
		{"vhost-vsock", plan{accel: "tcg", transport: channel.TransportVhostVsock, qmpSock: "/s/qmp.sock", fsSockets: []string{"/s/fs-0.sock"}},
			[]string{"vhost-vsock-device,guest-cid=3"}, nil},
		// arm64 guest: -M virt probes virtio-mmio devices last-added first, so the
		// disks go in reverse to keep vda = image, vdb = data.
		{"arm64 virt tcg", plan{arm64: true, accel: "tcg", transport: channel.TransportVhostUserVsock, cpuKHz: 2596150, vhostUser: "/s/vhu.sock", qmpSock: "/s/qmp.sock", fsSockets: []string{"/s/fs-0.sock"}},
			[]string{"virt,memory-backend=mem", "-cpu max,pauth-impdef=on", "console=ttyAMA0 panic=-1 quiet openshell.x=1",
				"-drive id=disk1,file=/d/data.ext4", "virtio-blk-device,drive=disk1,serial=openshell-disk1 -drive id=disk0,file=/d/img,,1.ext4"},
			[]string{"tsc_early_khz", "microvm", "q35", "ttyS0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := buildArgs(cfg, tc.p)
			joined := strings.Join(args, " ")
			for _, w := range tc.want {
				if !strings.Contains(joined, w) {
					t.Errorf("args lack %q:\n%s", w, joined)
				}
			}
			for _, a := range tc.avoid {
				if strings.Contains(joined, a) {
					t.Errorf("args contain %q:\n%s", a, joined)
				}
			}
			if !slices.Contains(args, "-no-reboot") || !slices.Contains(args, "-nodefaults") {
				t.Errorf("missing -no-reboot/-nodefaults")
			}
		})
	}
}

// TestCPUModel: a recorded model wins; an unrecorded one is the x86 TCG model of
// before RDRAND (KVM and arm64 models never changed); "" is today's default.
func TestCPUModel(t *testing.T) {
	for _, c := range []struct {
		p         plan
		want, got string
	}{
		{plan{accel: AccelTCG}, "", "qemu64,+rdrand"},
		{plan{accel: AccelTCG}, CPUUnrecorded, "qemu64"},
		{plan{accel: AccelTCG}, "qemu64", "qemu64"},
		{plan{accel: AccelTCG}, "qemu64,+rdrand", "qemu64,+rdrand"},
		{plan{accel: AccelKVM}, CPUUnrecorded, "host"},
		{plan{accel: AccelTCG, arm64: true}, CPUUnrecorded, "max,pauth-impdef=on"},
	} {
		if got := cpuModel(c.p, c.want); got != c.got {
			t.Errorf("cpuModel(%+v, %q) = %q; want %q", c.p, c.want, got, c.got)
		}
		p := c.p
		p.cpu = cpuModel(p, c.want)
		if a := strings.Join(buildArgs(vmm.Config{Name: "x", VCPUs: 1, MemoryMiB: 64, Kernel: "/k"}, p), " ") + " "; !strings.Contains(a, "-cpu "+c.got+" ") {
			t.Errorf("args for %+v lack -cpu %s: %s", c.p, c.got, a)
		}
	}
}
