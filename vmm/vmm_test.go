package vmm

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/openshell/openshell/internal/testenv"
)

func TestDetectKVM(t *testing.T) {
	vmx := []byte("processor\t: 0\nflags\t\t: fpu vme vmx sse\n\nprocessor\t: 1\nflags\t\t: fpu vme vmx sse\n")
	plain := []byte("processor\t: 0\nflags\t\t: fpu vme sse hypervisor\n")
	noKVM := errors.New("open /dev/kvm: no such file")
	for _, tc := range []struct {
		name          string
		cpuinfo, mods []byte
		kvmErr        error
		want          bool
		inReason      string
	}{
		{"vmx and kvm", vmx, nil, nil, true, "vmx"},
		{"vmx without /dev/kvm", vmx, nil, noKVM, false, "not usable"},
		// A paravirtual KVM: /dev/kvm opens but the CPU has no vmx/svm.
		{"pvm", plain, []byte("kvm_pvm 1 0 - Live\nkvm 2 1 kvm_pvm, Live\n"), nil, false, "no hardware virtualisation"},
		{"kvm_amd module", plain, []byte("kvm_amd 1 0 - Live\n"), nil, true, "kvm_amd"},
		{"svm", []byte("flags\t: svm\n"), nil, nil, true, "svm"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := detectKVM(tc.cpuinfo, tc.mods, tc.kvmErr)
			if got.Usable != tc.want || !strings.Contains(got.Reason, tc.inReason) {
				t.Fatalf("got %+v, want usable=%v (reason containing %q)", got, tc.want, tc.inReason)
			}
		})
	}
}

// TestDetectKVMHere: on this kind of host (/dev/kvm from a paravirtual KVM, no
// vmx/svm) KVM must be reported unusable.
func TestDetectKVMHere(t *testing.T) {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Skip("no /proc/cpuinfo")
	}
	hw := cpuFlags(b)["vmx"] || cpuFlags(b)["svm"]
	got := DetectKVM()
	if !hw && got.Usable {
		t.Fatalf("no vmx/svm but DetectKVM = %+v", got)
	}
	t.Logf("DetectKVM: %+v", got)
}

func FuzzCPUInfo(f *testing.F) {
	f.Add([]byte("flags\t: vmx sse\ncpu MHz\t: 1000.5\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = detectKVM(b, b, nil)
		_ = cpuFlags(b)
	})
}

func TestValidate(t *testing.T) {
	good := Config{Name: "a", Kernel: "/k", StateDir: "/tmp/x"}.WithDefaults()
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	if good.ConsoleLog != "/tmp/x/console.log" || good.Channel.CID != 3 || len(good.Channel.Ports) != len(DefaultPorts) {
		t.Fatalf("defaults: %+v", good)
	}
	for field, mut := range map[string]func(*Config){
		"Name":             func(c *Config) { c.Name = "" },
		"Kernel":           func(c *Config) { c.Kernel = "" },
		"StateDir":         func(c *Config) { c.StateDir = "rel" },
		"Channel.Ports[1]": func(c *Config) { c.Channel.Ports = []uint32{1, 0} },
		"Disks[0]":         func(c *Config) { c.Disks = []Disk{{Path: ""}} },
		"Channel.CID":      func(c *Config) { c.Channel.CID = 2 },
		"MemoryMiB":        func(c *Config) { c.MemoryMiB = 1 },
		"PCIDevices[0]":    func(c *Config) { c.PCIDevices = []string{"0000:01:00.0,x"} },
	} {
		c := good
		mut(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: got %v, want an error naming it", field, err)
		}
	}
}

func TestCreateWritableDisk(t *testing.T) {
	testenv.RequireCommand(t, "mkfs.ext4", "run scripts/setup-vm-host.sh (installs e2fsprogs)")
	p := filepath.Join(t.TempDir(), "data.ext4")
	if err := CreateWritableDisk(p, 64<<20); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil || st.Size() != 64<<20 {
		t.Fatalf("stat: %v %v", st, err)
	}
	if out, err := exec.Command("dumpe2fs", "-h", p).CombinedOutput(); err != nil || !strings.Contains(string(out), "openshell-data") {
		t.Fatalf("not an ext4 labelled openshell-data: %v %s", err, out)
	}
	// Refuses to overwrite: a sandbox's data is never wiped by accident.
	if err := CreateWritableDisk(p, 64<<20); !errors.Is(err, os.ErrExist) {
		t.Fatalf("second create: %v", err)
	}
	if err := CreateWritableDisk(filepath.Join(t.TempDir(), "tiny"), 1024); err == nil {
		t.Fatal("tiny disk accepted")
	}
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(p), ".*"))
	if len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}
