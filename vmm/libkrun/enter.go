package libkrun

import (
	"errors"
	"fmt"
	"os"

	"github.com/openshell/openshell/vmm"
)

// Errors from loading the library; Available and Start wrap them with the fix.
var (
	ErrNoLibrary = errors.New("libkrun library not loadable")
	ErrTooOld    = errors.New("libkrun library too old")
	ErrNoKVM     = errors.New("no hardware KVM")
)

// requiredSymbols are the libkrun.h calls Enter makes. krun_disable_implicit_vsock
// and krun_add_vsock (a vsock device without TSI, so the guest gets no network)
// arrived last: an older library lacks them.
var requiredSymbols = []string{
	"krun_set_log_level",
	"krun_create_ctx",
	"krun_set_vm_config",
	"krun_set_kernel",
	"krun_add_disk",
	"krun_add_virtiofs",
	"krun_disable_implicit_vsock",
	"krun_add_vsock",
	"krun_add_vsock_port2",
	"krun_set_console_output",
	"krun_start_enter",
}

const installHint = "install libkrun and libkrunfw (https://github.com/containers/libkrun), or point " + LibraryEnv + " at libkrun.so.1"

// Library is the library path or soname in use: $OPENSHELL_LIBKRUN, else libkrun.so.1.
func Library() string {
	if p := os.Getenv(LibraryEnv); p != "" {
		return p
	}
	return DefaultLibrary
}

// Probe loads the library and resolves every symbol Enter needs, without creating
// a VM. The error says what is missing and how to fix it.
func Probe(path string) error {
	_, err := openLibrary(path)
	switch {
	case errors.Is(err, ErrTooOld):
		return fmt.Errorf("%w; install a newer libkrun (one with krun_disable_implicit_vsock and krun_add_vsock)", err)
	case err != nil:
		return fmt.Errorf("%w; %s", err, installHint)
	}
	return nil
}

// Available reports whether libkrun can run VMs here: the library loads with every
// call we use, and the CPU has hardware KVM (libkrun has no software emulation).
func Available() error { return available(Library(), vmm.DetectKVM()) }

func available(library string, kvm vmm.KVMInfo) error {
	var errs []error
	if err := Probe(library); err != nil {
		errs = append(errs, err)
	}
	if !kvm.Usable {
		errs = append(errs, fmt.Errorf("%w: %s; libkrun needs /dev/kvm on a CPU with vmx/svm", ErrNoKVM, kvm.Reason))
	}
	if len(errs) == 2 {
		return fmt.Errorf("%w; and %w", errs[0], errs[1])
	}
	return errors.Join(errs...)
}

// Enter is the enter process's work: load the library named by the spec at
// specPath, set up one context and enter the VM. It returns only on failure; on
// success libkrun owns the process and exits it with the guest.
func Enter(specPath string) error {
	s, err := ReadEnterSpec(specPath)
	if err != nil {
		return err
	}
	l, err := openLibrary(s.Library)
	if err != nil {
		if errors.Is(err, ErrTooOld) {
			return fmt.Errorf("%w; install a newer libkrun", err)
		}
		return fmt.Errorf("%w; %s", err, installHint)
	}
	return enter(l, s)
}

func enter(l *lib, s EnterSpec) error {
	if err := l.setLogLevel(s.LogLevel); err != nil {
		return err
	}
	ctx, err := l.createCtx()
	if err != nil {
		return err
	}
	if err := l.setVMConfig(ctx, s.VCPUs, s.RAMMiB); err != nil {
		return err
	}
	if err := l.setKernel(ctx, s.Kernel, s.KernelFormat, s.Initramfs, s.Cmdline); err != nil {
		return err
	}
	for _, d := range s.Disks {
		if err := l.addDisk(ctx, d.BlockID, d.Path, d.ReadOnly); err != nil {
			return fmt.Errorf("disk %s: %w", d.Path, err)
		}
	}
	for _, d := range s.SharedDirs {
		if err := l.addVirtiofs(ctx, d.Tag, d.Path); err != nil {
			return fmt.Errorf("shared dir %s: %w", d.Tag, err)
		}
	}
	// Our own vsock device without TSI: the guest reaches the host only on the
	// mapped ports and has no network of its own.
	if err := l.disableImplicitVsock(ctx); err != nil {
		return err
	}
	if err := l.addVsock(ctx, 0); err != nil {
		return err
	}
	for _, p := range s.VsockPorts {
		if err := l.addVsockPort(ctx, p.Port, p.Path, false); err != nil {
			return fmt.Errorf("vsock port %d: %w", p.Port, err)
		}
	}
	if err := l.setConsoleOutput(ctx, s.ConsoleOutput); err != nil {
		return err
	}
	if s.EnteredFile != "" {
		if err := os.WriteFile(s.EnteredFile, []byte(fmt.Sprintf("%d\n", os.Getpid())), 0o600); err != nil {
			return fmt.Errorf("libkrun: mark entered: %w", err)
		}
	}
	return l.startEnter(ctx)
}
