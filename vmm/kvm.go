package vmm

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"
)

// KVMInfo says whether hardware KVM is usable here, and the evidence.
type KVMInfo struct {
	Usable bool   `json:"usable"`
	Reason string `json:"reason"`
}

// DetectKVM reports hardware KVM only when the CPU has hardware virtualisation
// (vmx/svm flags, or kvm_intel/kvm_amd loaded) AND /dev/kvm opens. /dev/kvm alone is
// not enough: a paravirtual KVM (kvm_pvm) accepts KVM_CREATE_VM yet stock guest
// kernels hang on it.
func DetectKVM() KVMInfo {
	cpuinfo, _ := os.ReadFile("/proc/cpuinfo")
	modules, _ := os.ReadFile("/proc/modules")
	return detectKVM(cpuinfo, modules, kvmOpenable())
}

func kvmOpenable() error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

func detectKVM(cpuinfo, modules []byte, kvmErr error) KVMInfo {
	hw := ""
	if fl := cpuFlags(cpuinfo); fl["vmx"] {
		hw = "cpu flag vmx"
	} else if fl["svm"] {
		hw = "cpu flag svm"
	}
	if hw == "" {
		for _, line := range strings.Split(string(modules), "\n") {
			name, _, _ := strings.Cut(line, " ")
			if name == "kvm_intel" || name == "kvm_amd" {
				hw = "module " + name + " loaded"
				break
			}
		}
	}
	switch {
	case hw == "":
		return KVMInfo{Reason: "no hardware virtualisation (no vmx/svm cpu flag, no kvm_intel/kvm_amd module)"}
	case kvmErr != nil:
		return KVMInfo{Reason: fmt.Sprintf("%s but /dev/kvm is not usable (%v)", hw, kvmErr)}
	default:
		return KVMInfo{Usable: true, Reason: hw + " and /dev/kvm opens"}
	}
}

func cpuFlags(cpuinfo []byte) map[string]bool {
	flags := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(cpuinfo))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(k) != "flags" {
			continue
		}
		for _, f := range strings.Fields(v) {
			flags[f] = true
		}
		break // every CPU lists the same flags
	}
	return flags
}

// HasCPUFlag reports whether the host CPU lists flag in /proc/cpuinfo.
func HasCPUFlag(flag string) bool {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return cpuFlags(b)[flag]
}
