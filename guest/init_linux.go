package guest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/guest/kmod"
	"github.com/openshell/openshell/internal/defaultpath"
)

// RunPID1 prepares the guest root, calls run (the supervisor main) as PID 1 in the
// new root, then syncs, unmounts and powers the VM off. It never returns. A failure
// before run is logged to the console (prefixed "openshell-init: FATAL") and the VM
// powers off, so the host sees the reason in the console log.
func RunPID1(opts InitOptions, run func() int) {
	// The kernel's part of the boot ends here.
	Stamp("kernel")
	opts = opts.withDefaults()
	start := time.Now()
	setupConsole()
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("component", "openshell-init")
	}
	code := 0
	if err := prepareRoot(opts, log); err != nil {
		fmt.Fprintf(os.Stderr, "openshell-init: FATAL: %v\n", err)
		code = 1
	} else {
		log.Info("root ready; starting", "elapsed", time.Since(start).Round(time.Millisecond))
		Stamp("init")
		code = runGuarded(run, log)
	}
	log.Info("powering off", "exit_code", code)
	powerOff(log)
}

// bootTimeNs is CLOCK_BOOTTIME: the guest kernel's clock since it started keeping time.
func bootTimeNs() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return ts.Nano()
}

func runGuarded(run func() int, log *slog.Logger) (code int) {
	defer func() {
		if r := recover(); r != nil {
			log.Error("main panicked", "panic", r, "stack", string(debug.Stack()))
			code = 2
		}
	}()
	return run()
}

// setupConsole mounts devtmpfs (CONFIG_DEVTMPFS_MOUNT is off in the cloud kernel) and
// points stdin/stdout/stderr at /dev/console in case the kernel could not.
func setupConsole() {
	_ = os.MkdirAll("/dev", 0o755)
	if err := unix.Mount("devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"); err != nil && !errors.Is(err, unix.EBUSY) {
		// Nothing to log to yet; prepareRoot reports missing devices later.
		_ = err
	}
	fd, err := unix.Open("/dev/console", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	for i := 0; i <= 2; i++ {
		_ = unix.Dup3(fd, i, 0)
	}
	if fd > 2 {
		_ = unix.Close(fd)
	}
}

func mountOne(src, target, fstype string, flags uintptr, data string) error {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return fmt.Errorf("mkdir %s: %w", target, err)
	}
	if err := unix.Mount(src, target, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s (%s) on %s: %w", src, fstype, target, err)
	}
	return nil
}

func prepareRoot(opts InitOptions, log *slog.Logger) error {
	if err := mountOne("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return err
	}
	if err := mountOne("sysfs", "/sys", "sysfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return err
	}
	t0 := time.Now()
	n, checked, err := loadModules(opts.ModulesDir, log)
	if err != nil {
		return err
	}
	log.Info("kernel modules loaded", "count", n, "took", time.Since(t0).Round(time.Millisecond), "signatures_checked", checked)
	watchPowerButton(opts.PowerButtonGrace, log)

	if err := waitFor(opts.ImageDisk, opts.DiskWait); err != nil {
		return fmt.Errorf("image disk: %w (the host must attach the image as the first virtio-blk disk)", err)
	}
	if err := mountOne(opts.ImageDisk, imageMount, "ext4", unix.MS_RDONLY|unix.MS_NODEV, "noload"); err != nil {
		return fmt.Errorf("image disk: %w", err)
	}
	// Wait for the writable disk only when the VM has a second virtio disk: a VM
	// without one must not pay the wait.
	dataWait := 100 * time.Millisecond
	if virtioBlockCount() >= 2 {
		dataWait = opts.DiskWait
	}
	if err := waitFor(opts.DataDisk, dataWait); err == nil {
		if err := mountOne(opts.DataDisk, dataMount, "ext4", unix.MS_NODEV, ""); err != nil {
			return fmt.Errorf("writable disk: %w (the host must format it with vmm.CreateWritableDisk)", err)
		}
	} else {
		log.Warn("no writable disk; changes will not survive a reboot", "disk", opts.DataDisk)
		if err := mountOne("tmpfs", dataMount, "tmpfs", unix.MS_NODEV, "mode=0755"); err != nil {
			return err
		}
	}
	upper, work := filepath.Join(dataMount, "upper"), filepath.Join(dataMount, "work")
	for _, d := range []string{upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("writable disk: %w", err)
		}
	}
	ovl := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", imageMount, upper, work)
	if err := mountOne("overlay", newRoot, "overlay", 0, ovl); err != nil {
		return fmt.Errorf("overlay root: %w", err)
	}
	if err := switchRoot(); err != nil {
		return err
	}
	extraMounts(log)
	bringUpLoopback(log)
	if os.Getenv("PATH") == "" {
		_ = os.Setenv("PATH", defaultpath.PATH)
	}
	return nil
}

// virtioBlockCount counts virtio block devices (virtio device id 2) on the bus.
func virtioBlockCount() int {
	devs, _ := filepath.Glob("/sys/bus/virtio/devices/*/device")
	n := 0
	for _, d := range devs {
		if b, err := os.ReadFile(d); err == nil && strings.TrimSpace(string(b)) == "0x0002" {
			n++
		}
	}
	return n
}

func waitFor(path string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		_, err := os.Stat(path)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within %s: %w", path, d, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// loadModules loads every *.ko under dir in dependency order (depends= of modinfo).
// Each module's appended signature is dropped before the load unless the kernel
// insists on it (signaturesEnforced); checked reports whether signatures were checked.
func loadModules(dir string, log *slog.Logger) (int, bool, error) {
	unsigned := !signaturesEnforced()
	paths := map[string]string{}
	var infos []kmod.Info
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".ko") {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return nil
		}
		defer f.Close()
		in, err := kmod.ReadInfo(f, d.Name())
		if err != nil {
			log.Warn("skipping module", "path", p, "err", err)
			return nil
		}
		paths[in.Name] = p
		infos = append(infos, in)
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, false, fmt.Errorf("modules in %s: %w", dir, err)
	}
	ordered, err := kmod.Order(infos)
	if err != nil {
		return 0, false, err
	}
	loadSigned := func(path string) error {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		return unix.FinitModule(int(f.Fd()), "", 0)
	}
	load := func(m kmod.Info) bool {
		var err error
		if unsigned {
			var data []byte
			if data, err = os.ReadFile(paths[m.Name]); err == nil {
				err = unix.InitModule(kmod.StripSignature(data), "")
			}
			if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EKEYREJECTED) || errors.Is(err, unix.ENOKEY) {
				// Refused unsigned all the same (a kernel locked down without
				// enforcing signatures): the signed file, then, and for the rest.
				unsigned = false
				err = loadSigned(paths[m.Name])
			}
		} else {
			err = loadSigned(paths[m.Name])
		}
		if err != nil && !errors.Is(err, unix.EEXIST) {
			log.Warn("module failed to load", "name", m.Name, "err", err)
			return false
		}
		return true
	}
	// Loading a module costs a software-emulated guest milliseconds (tens with its
	// signature checked): the ones for devices this VM does not have wait until the
	// device is seen. The PCI transport only when a virtio PCI device exists (q35;
	// microvm and arm64 virt use MMIO); the NIC and virtiofs drivers, after the
	// transports, only when the bus shows such a device.
	pciVirtio := hasVirtioPCI()
	n := 0
	var later []kmod.Info
	for _, m := range ordered {
		if w := deviceModules[m.Name]; w != "" && (w != devPCI || !pciVirtio) {
			later = append(later, m)
			continue
		}
		if load(m) {
			n++
		}
	}
	present := virtioDeviceIDs()
	for _, m := range later {
		if w := deviceModules[m.Name]; w == devPCI || !present[w] {
			continue
		}
		if load(m) {
			n++
		}
	}
	return n, !unsigned, nil
}

// signaturesEnforced reports whether the kernel refuses modules without a valid
// signature (module.sig_enforce, or a kernel built to force it). When it does not,
// a signature is still checked when present, which under software emulation costs
// more than the rest of the load (12 modules: 145-149 ms with, 89-112 ms without);
// the modules come from the initramfs the host built next to the kernel, so the check
// proves nothing the kernel's own provenance does not.
func signaturesEnforced() bool {
	b, err := os.ReadFile("/sys/module/module/parameters/sig_enforce")
	if err != nil {
		// No parameter: a kernel without module signing, which checks nothing.
		return false
	}
	return strings.TrimSpace(string(b)) != "N"
}

// Which device a module serves, for those loaded only when it is present: devPCI,
// or the virtio device id as /sys/bus/virtio/devices/*/device shows it.
const devPCI = "pci"

var deviceModules = map[string]string{
	"virtio_pci": devPCI, "virtio_pci_modern_dev": devPCI, "virtio_pci_legacy_dev": devPCI,
	"virtio_net": "0x0001", "net_failover": "0x0001", "failover": "0x0001",
	"virtiofs": "0x001a",
}

// hasVirtioPCI reports whether a virtio device (vendor 0x1af4) sits on a PCI bus.
func hasVirtioPCI() bool {
	vs, _ := filepath.Glob("/sys/bus/pci/devices/*/vendor")
	for _, v := range vs {
		if b, err := os.ReadFile(v); err == nil && strings.TrimSpace(string(b)) == "0x1af4" {
			return true
		}
	}
	return false
}

// virtioDeviceIDs is the set of virtio device ids on the bus ("0x0002" = block).
func virtioDeviceIDs() map[string]bool {
	ids := map[string]bool{}
	devs, _ := filepath.Glob("/sys/bus/virtio/devices/*/device")
	for _, d := range devs {
		if b, err := os.ReadFile(d); err == nil {
			ids[strings.TrimSpace(string(b))] = true
		}
	}
	return ids
}

// switchRoot moves /dev, /proc, /sys into the new root, frees the initramfs files and
// makes the new root "/" (MS_MOVE + chroot, as switch_root does).
func switchRoot() error {
	for _, m := range []string{"/dev", "/proc", "/sys"} {
		target := newRoot + m
		if err := os.MkdirAll(target, 0o755); err != nil {
			return fmt.Errorf("switch root: %w", err)
		}
		if err := unix.Mount(m, target, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("switch root: move %s: %w", m, err)
		}
	}
	// The initramfs stays in RAM until its files are deleted; the big ones are ours.
	_ = os.RemoveAll("/lib/modules")
	_ = os.Remove("/init")
	if err := unix.Chdir(newRoot); err != nil {
		return fmt.Errorf("switch root: %w", err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("switch root: move %s to /: %w", newRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("switch root: chroot: %w", err)
	}
	return unix.Chdir("/")
}

// extraMounts are best effort: a supervisor without them still runs, with less.
func extraMounts(log *slog.Logger) {
	for _, m := range []struct {
		src, target, fstype string
		flags               uintptr
		data                string
	}{
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666"},
		{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	} {
		if err := mountOne(m.src, m.target, m.fstype, m.flags, m.data); err != nil {
			log.Warn("optional mount failed", "err", err)
		}
	}
}

func bringUpLoopback(log *slog.Logger) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		log.Warn("loopback", "err", err)
		return
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		log.Warn("loopback", "err", err)
		return
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		log.Warn("loopback", "err", err)
	}
}

// powerOff syncs, detaches every mount but / (deepest first), remounts / read-only
// and powers the machine off.
func powerOff(log *slog.Logger) {
	unix.Sync()
	if b, err := os.ReadFile("/proc/self/mounts"); err == nil {
		var targets []string
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) >= 2 && f[1] != "/" && !slices.Contains([]string{"/proc", "/sys", "/dev"}, f[1]) {
				targets = append(targets, f[1])
			}
		}
		slices.Reverse(targets)
		for _, t := range targets {
			_ = unix.Unmount(t, unix.MNT_DETACH)
		}
	}
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		log.Debug("remount / read-only", "err", err)
	}
	unix.Sync()
	for {
		_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		time.Sleep(time.Second)
	}
}

// Linux input event constants (linux/input-event-codes.h).
const (
	evKey         = 1
	keyPower      = 116
	inputEventLen = 24 // struct input_event on 64-bit: timeval(16) type(2) code(2) value(4)
)

// watchPowerButton opens the input devices now (before switch root moves /dev) and,
// on a power-button press, sends SIGTERM to every process and to init itself, then
// powers off after grace if run has not returned by then.
func watchPowerButton(grace time.Duration, log *slog.Logger) {
	paths, _ := filepath.Glob("/dev/input/event*")
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		go func() {
			defer f.Close()
			buf := make([]byte, inputEventLen)
			for {
				if _, err := io.ReadFull(f, buf); err != nil {
					return
				}
				typ := binary.LittleEndian.Uint16(buf[16:])
				code := binary.LittleEndian.Uint16(buf[18:])
				val := int32(binary.LittleEndian.Uint32(buf[20:]))
				if typ != evKey || code != keyPower || val != 1 {
					continue
				}
				log.Info("power button pressed; terminating processes", "grace", grace)
				_ = unix.Kill(-1, unix.SIGTERM)
				_ = unix.Kill(os.Getpid(), unix.SIGTERM)
				time.Sleep(grace)
				log.Warn("main did not return after the power button; powering off")
				powerOff(log)
			}
		}()
	}
}
