package vmm

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// AccelInfo is the accelerator DetectAccel picked and why.
type AccelInfo struct {
	Name   string `json:"name"`   // "kvm" or "tcg"
	Reason string `json:"reason"` // human-readable evidence
}

// DetectAccel picks KVM only when the CPU has hardware virtualisation (vmx/svm flags,
// or kvm_intel/kvm_amd loaded) AND /dev/kvm opens. /dev/kvm alone is not enough: a
// paravirtual KVM (kvm_pvm) accepts KVM_CREATE_VM yet stock guest kernels hang on it.
func DetectAccel() AccelInfo {
	cpuinfo, _ := os.ReadFile("/proc/cpuinfo")
	modules, _ := os.ReadFile("/proc/modules")
	return detectAccel(cpuinfo, modules, kvmOpenable())
}

func kvmOpenable() error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

func detectAccel(cpuinfo, modules []byte, kvmErr error) AccelInfo {
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
		return AccelInfo{Name: AccelTCG, Reason: "no hardware virtualisation (no vmx/svm cpu flag, no kvm_intel/kvm_amd module); using TCG software emulation (slow)"}
	case kvmErr != nil:
		return AccelInfo{Name: AccelTCG, Reason: fmt.Sprintf("%s but /dev/kvm is not usable (%v); using TCG software emulation (slow)", hw, kvmErr)}
	default:
		return AccelInfo{Name: AccelKVM, Reason: hw + " and /dev/kvm opens"}
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

// HostCPUKHz is the host CPU clock in kHz from /proc/cpuinfo ("cpu MHz"), 0 when
// unknown. TCG guests need it as tsc_early_khz: without it the kernel sometimes
// fails to calibrate the TSC and hangs.
func HostCPUKHz() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return cpuKHz(b)
}

func cpuKHz(cpuinfo []byte) int {
	for _, line := range strings.Split(string(cpuinfo), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(k) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || mhz <= 0 || mhz > 1e6 {
			return 0
		}
		return int(mhz * 1000)
	}
	return 0
}
