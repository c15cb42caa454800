// Package gputest holds the GPU tests' stand-ins: the recorded sysfs trees of
// internal/gpu/testdata, copied so a test may change them, and a stand-in for the
// kernel's PCI core that answers the sysfs writes moving a device between drivers.
package gputest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
)

// Kernel stands in for the Linux PCI core, and only for the sysfs writes that move
// a device between drivers (driver_override, bind, unbind): it changes the recorded
// tree the way the kernel changes /sys. Everything else the manager reads is the
// recorded tree as it is. One write can be made to fail once (failAt).
type Kernel struct {
	root string // the tree's sys directory

	mu       sync.Mutex
	failOn   map[string]string // "bind BDF" | "unbind BDF" | "override BDF" -> fail that write
	writes   []string
	unwanted []string // writes the kernel would not accept at such a path
}

// NewKernel stands in for the kernel of the tree whose sys directory is sys.
func NewKernel(sys string) *Kernel { return &Kernel{root: sys, failOn: map[string]string{}} }

// FailAt makes the next write of op ("override", "bind", "unbind") for bdf fail.
func (k *Kernel) FailAt(op, bdf string) {
	k.mu.Lock()
	k.failOn[op+" "+bdf] = "injected"
	k.mu.Unlock()
}

// Log is every write so far ("path-in-sys <- value").
func (k *Kernel) Log() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.writes...)
}

// Unwanted are writes to paths the kernel would refuse.
func (k *Kernel) Unwanted() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.unwanted...)
}

// Write is gpu.Config.Write for the tree.
func (k *Kernel) Write(path string, data []byte) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	rel, err := filepath.Rel(k.root, path)
	if err != nil || strings.HasPrefix(rel, "..") {
		k.unwanted = append(k.unwanted, path)
		return &os.PathError{Op: "write", Path: path, Err: syscall.EACCES}
	}
	val := strings.TrimSpace(string(data))
	k.writes = append(k.writes, rel+" <- "+val)
	parts := strings.Split(rel, string(filepath.Separator))
	fail := func(op, bdf string) error {
		if _, ok := k.failOn[op+" "+bdf]; ok {
			delete(k.failOn, op+" "+bdf) // one failure; the rollback's writes succeed
			return &os.PathError{Op: "write", Path: path, Err: syscall.EIO}
		}
		return nil
	}
	switch {
	case len(parts) == 5 && parts[0] == "bus" && parts[2] == "devices" && parts[4] == "driver_override":
		bdf := parts[3]
		if err := fail("override", bdf); err != nil {
			return err
		}
		if val == "" {
			val = "(null)"
		}
		return os.WriteFile(path, []byte(val+"\n"), 0o644)
	case len(parts) == 5 && parts[0] == "bus" && parts[2] == "drivers" && (parts[4] == "bind" || parts[4] == "unbind"):
		drv, op, bdf := parts[3], parts[4], val
		if err := fail(op, bdf); err != nil {
			return err
		}
		dev, err := filepath.EvalSymlinks(filepath.Join(k.root, "bus", "pci", "devices", bdf))
		if err != nil {
			return &os.PathError{Op: "write", Path: path, Err: syscall.ENODEV}
		}
		link := filepath.Join(dev, "driver")
		cur := linkBase(link)
		if op == "unbind" {
			if cur != drv {
				return &os.PathError{Op: "write", Path: path, Err: syscall.ENODEV}
			}
			return os.Remove(link)
		}
		if cur != "" {
			return &os.PathError{Op: "write", Path: path, Err: syscall.EBUSY}
		}
		ov, _ := os.ReadFile(filepath.Join(dev, "driver_override"))
		if o := strings.TrimSpace(string(ov)); o != "(null)" && o != drv {
			return &os.PathError{Op: "write", Path: path, Err: syscall.ENODEV}
		}
		target, err := filepath.Rel(dev, filepath.Join(k.root, "bus", "pci", "drivers", drv))
		if err != nil {
			return err
		}
		return os.Symlink(target, link)
	}
	k.unwanted = append(k.unwanted, rel)
	return fmt.Errorf("kernel stand-in: no such writable attribute %s", rel)
}

func linkBase(p string) string {
	t, err := os.Readlink(p)
	if err != nil {
		return ""
	}
	return filepath.Base(t)
}
