package bundle

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/openshell/openshell/guest/kmod"
	"github.com/openshell/openshell/internal/staticbin"
)

// GuestModules are the kernel modules the guest needs (their dependencies are added
// automatically; modules built into the kernel are skipped): virtio transports,
// vsock, the serial console port, block, net, virtiofs, overlayfs and the power button.
var GuestModules = []string{
	"virtio", "virtio_ring", "virtio_mmio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
	"vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport",
	"virtio_console", "failover", "net_failover", "virtio_net", "virtio_blk",
	"fuse", "virtiofs", "overlay",
	// ACPI power button as an input device: Stop (system_powerdown) reaches init.
	"button", "evdev",
}

// initramfsFormat changes whenever the archive layout changes, invalidating caches.
const initramfsFormat = "openshell-initramfs-v2"

// BuildInitramfs returns an uncompressed newc cpio initramfs with initBinary as /init and
// GuestModules (plus dependencies) from modulesDir under /lib/modules/<kver>/. The
// result is cached in cacheDir under a hash of its content and written atomically,
// so concurrent builders and repeated calls are cheap and safe. Uncompressed because
// the guest kernel unpacks it on every boot: inflating the ~8 MiB gzip of a 24 MiB
// supervisor costs a software-emulated guest ~0.25 s of CPU, a copy almost nothing,
// while the host keeps one cached file per supervisor build.
func BuildInitramfs(ctx context.Context, initBinary, modulesDir, cacheDir string) (string, error) {
	initData, err := os.ReadFile(initBinary)
	if err != nil {
		return "", fmt.Errorf("initramfs: init binary: %w", err)
	}
	arch, err := checkStatic(initData)
	if err != nil {
		return "", fmt.Errorf("initramfs: init binary %s: %w", initBinary, err)
	}
	mods, err := selectModules(modulesDir, GuestModules)
	if err != nil {
		return "", err
	}
	// One bundle format for x86_64 and arm64 guests, but init and modules must agree.
	if len(mods) > 0 {
		if f, err := elf.NewFile(bytes.NewReader(mods[0].data)); err == nil {
			ma := f.Machine
			_ = f.Close()
			if ma != arch {
				return "", fmt.Errorf("initramfs: init binary %s is built for %s but the kernel modules in %s are %s: pair the init binary with the kernel of the same architecture (kernel/vmlinux for amd64, kernel-arm64/Image for arm64)", initBinary, archName(arch), modulesDir, archName(ma))
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	kver := filepath.Base(filepath.Clean(modulesDir))
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00", initramfsFormat, kver)
	h.Write(initData)
	for _, m := range mods {
		fmt.Fprintf(h, "\x00%s\x00%d\x00", m.name, len(m.data))
		h.Write(m.data)
	}
	sum := hex.EncodeToString(h.Sum(nil))[:24]
	out := filepath.Join(cacheDir, "initramfs-"+sum+".cpio")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", fmt.Errorf("initramfs: cache dir: %w", err)
	}

	var buf bytes.Buffer
	cw := &newcWriter{w: &buf}
	for _, d := range []string{"dev", "proc", "sys", "mnt", "newroot", "lib", "lib/modules", "lib/modules/" + kver} {
		cw.Dir(d, 0o755)
	}
	// The kernel opens /dev/console for init before init can mount devtmpfs.
	cw.CharDev("dev/console", 0o600, 5, 1)
	for _, m := range mods {
		cw.File("lib/modules/"+kver+"/"+m.name+".ko", 0o644, m.data)
	}
	cw.File("init", 0o755, initData)
	if err := cw.Close(); err != nil {
		return "", fmt.Errorf("initramfs: %w", err)
	}
	tmp, err := os.CreateTemp(cacheDir, ".initramfs-*")
	if err != nil {
		return "", fmt.Errorf("initramfs: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(buf.Bytes()); err != nil {
		_ = tmp.Close()
		return "", fmt.Errorf("initramfs: write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("initramfs: %w", err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return "", fmt.Errorf("initramfs: %w", err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return "", fmt.Errorf("initramfs: %w", err)
	}
	return out, nil
}

// checkStatic rejects binaries that need a dynamic loader (the initramfs has none)
// or that no guest kernel of ours runs, and returns the binary's architecture.
func checkStatic(b []byte) (elf.Machine, error) {
	m, err := staticbin.Machine(bytes.NewReader(b))
	if errors.Is(err, staticbin.ErrDynamic) {
		return 0, fmt.Errorf("%w; build it with CGO_ENABLED=0", err)
	}
	if err != nil {
		return 0, err
	}
	if m != elf.EM_X86_64 && m != elf.EM_AARCH64 {
		return 0, fmt.Errorf("is built for %s; guests are x86_64 (GOARCH=amd64) or arm64 (GOARCH=arm64)", m)
	}
	return m, nil
}

func archName(m elf.Machine) string {
	switch m {
	case elf.EM_X86_64:
		return "amd64"
	case elf.EM_AARCH64:
		return "arm64"
	}
	return m.String()
}

type module struct {
	name string
	data []byte
}

// selectModules resolves want (plus dependencies) in the module tree at dir.
func selectModules(dir string, want []string) ([]module, error) {
	index := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			index[kmod.Normalize(d.Name())] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("initramfs: kernel modules in %s: %w; run scripts/setup-vm-host.sh", dir, err)
	}
	builtin := readBuiltin(filepath.Join(dir, "modules.builtin"))
	var out []module
	seen := map[string]bool{}
	var add func(name, neededBy string) error
	add = func(name, neededBy string) error {
		name = kmod.Normalize(name)
		if seen[name] || builtin[name] {
			return nil
		}
		seen[name] = true
		p, ok := index[name]
		if !ok {
			return fmt.Errorf("initramfs: kernel module %s%s not found in %s (compressed .ko.xz/.zst modules are not supported; use the 6.1 cloud kernel from scripts/setup-vm-host.sh)", name, neededBy, dir)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		in, err := kmod.ReadInfo(bytes.NewReader(data), filepath.Base(p))
		if err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		out = append(out, module{name: name, data: data})
		for _, d := range in.Depends {
			if err := add(d, " (needed by "+name+")"); err != nil {
				return err
			}
		}
		return nil
	}
	for _, w := range want {
		if err := add(w, ""); err != nil {
			return nil, err
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}

func readBuiltin(path string) map[string]bool {
	m := map[string]bool{}
	f, err := os.Open(path)
	if err != nil {
		return m
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			m[kmod.Normalize(filepath.Base(line))] = true
		}
	}
	return m
}
