// Package bundle assembles what a microVM boots: it finds the guest kernel installed
// by scripts/setup-vm-host.sh and builds the initramfs (the static init binary as
// /init plus the kernel modules the guest needs), cached by content hash.
package bundle

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// EnvKernel overrides the kernel location.
const EnvKernel = "OPENSHELL_VM_KERNEL"

// SystemVMDir is where the setup script installs the kernel for all users.
const SystemVMDir = "/var/lib/openshell/vm"

// ErrKernelNotFound means no guest kernel was found anywhere.
var ErrKernelNotFound = errors.New("guest kernel not found")

// KernelFile is the kernel's path inside a VM dir for a guest architecture (GOARCH
// names): kernel/vmlinux for amd64 (an ELF QEMU and libkrun boot directly),
// kernel-arm64/Image for arm64 (the uncompressed Image Virtualization.framework needs).
func KernelFile(goarch string) string {
	if goarch == "arm64" {
		return filepath.Join("kernel-arm64", "Image")
	}
	return filepath.Join("kernel", "vmlinux")
}

// KernelCandidates lists, in order, where FindKernel looks.
func KernelCandidates(flag string) []string { return kernelCandidates(flag, runtime.GOARCH) }

func kernelCandidates(flag, goarch string) []string {
	var c []string
	if flag != "" {
		c = append(c, flag)
	}
	if e := os.Getenv(EnvKernel); e != "" {
		c = append(c, e)
	}
	data := os.Getenv("XDG_DATA_HOME")
	if data == "" {
		if home, err := os.UserHomeDir(); err == nil {
			data = filepath.Join(home, ".local", "share")
		}
	}
	if data != "" {
		c = append(c, filepath.Join(data, "openshell", "vm", KernelFile(goarch)))
	}
	if d := os.Getenv("OPENSHELL_VM_DIR"); d != "" {
		c = append(c, filepath.Join(d, KernelFile(goarch)))
	}
	return append(c, filepath.Join(SystemVMDir, KernelFile(goarch)))
}

// FindKernel returns the guest kernel: flag, then $OPENSHELL_VM_KERNEL, then
// $XDG_DATA_HOME/openshell/vm/kernel/vmlinux (default ~/.local/share/...), then
// /var/lib/openshell/vm/kernel/vmlinux. An explicit flag or env value that does not
// exist is an error rather than silently falling through.
func FindKernel(flag string) (string, error) { return FindKernelFor(flag, runtime.GOARCH) }

// FindKernelFor is FindKernel for a guest architecture (GOARCH names: amd64, arm64).
func FindKernelFor(flag, goarch string) (string, error) {
	explicit := map[string]string{}
	if flag != "" {
		explicit[flag] = "--kernel flag"
	}
	if e := os.Getenv(EnvKernel); e != "" {
		explicit[e] = "$" + EnvKernel
	}
	cands := kernelCandidates(flag, goarch)
	for _, p := range cands {
		st, err := os.Stat(p)
		if err == nil && st.Mode().IsRegular() {
			return p, nil
		}
		if src, ok := explicit[p]; ok {
			return "", fmt.Errorf("%w: %s names %s: %v", ErrKernelNotFound, src, p, err)
		}
	}
	return "", fmt.Errorf("%w (looked in %s): run scripts/setup-vm-host.sh to install it",
		ErrKernelNotFound, strings.Join(cands, ", "))
}

// ModulesDir returns the module tree that belongs to kernel: <dir of kernel>/modules/<kver>,
// with kver read from <dir>/kver or, when there is a single tree, that one.
func ModulesDir(kernel string) (string, error) {
	base := filepath.Join(filepath.Dir(kernel), "modules")
	if b, err := os.ReadFile(filepath.Join(filepath.Dir(kernel), "kver")); err == nil {
		d := filepath.Join(base, strings.TrimSpace(string(b)))
		if st, err := os.Stat(d); err == nil && st.IsDir() {
			return d, nil
		}
	}
	ents, err := os.ReadDir(base)
	if err != nil {
		return "", fmt.Errorf("kernel modules for %s: %w; run scripts/setup-vm-host.sh", kernel, err)
	}
	var dirs []string
	for _, e := range ents {
		if e.IsDir() {
			dirs = append(dirs, filepath.Join(base, e.Name()))
		}
	}
	if len(dirs) != 1 {
		return "", fmt.Errorf("kernel modules for %s: want one tree in %s, found %d; rerun scripts/setup-vm-host.sh", kernel, base, len(dirs))
	}
	return dirs[0], nil
}
