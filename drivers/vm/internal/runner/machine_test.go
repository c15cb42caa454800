package runner

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/openshell/openshell/drivers/vm/internal/state"
	"github.com/openshell/openshell/vmm"
	"github.com/openshell/openshell/vmm/libkrun"
)

func TestSpecBackendValidated(t *testing.T) {
	s := &Spec{SandboxID: "a", GatewayAddr: "127.0.0.1:1", Machine: MachineSpec{VCPUs: 1, MemoryMiB: 128, Kernel: "/k", Initrd: "/i", ImageDisk: "/d", Disk: "/w", Backend: "hyperv"}}
	if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "machine.backend") {
		t.Fatalf("Validate with backend hyperv = %v", err)
	}
	s.Machine.Backend = ""
	if err := s.Validate(); err != nil {
		t.Fatalf("empty backend (auto): %v", err)
	}
}

// TestNewVMMMachineRequestedBackendUnavailable: a spec naming a backend this host
// cannot run fails at machine construction with the reason, before any VMM starts.
func TestNewVMMMachineRequestedBackendUnavailable(t *testing.T) {
	if libkrun.Available() == nil {
		t.Skip("libkrun can run here")
	}
	spec := &Spec{SandboxID: "a", Machine: MachineSpec{VCPUs: 1, MemoryMiB: 128, Kernel: "/k", Initrd: "/i", ImageDisk: "/d", Disk: "/w", Backend: "libkrun"}}
	_, err := NewVMMMachine(t.Context(), spec, state.PathsFor(t.TempDir()), slog.Default())
	if err == nil || !strings.Contains(err.Error(), "backend libkrun was requested but cannot run here") {
		t.Fatalf("NewVMMMachine(libkrun) = %v", err)
	}
	cfg := MachineConfig(spec, state.PathsFor("/s"))
	if len(cfg.Disks) != 2 || !cfg.Disks[0].ReadOnly || cfg.Disks[1].ReadOnly || len(cfg.Channel.Ports) != len(vmm.DefaultPorts) {
		t.Fatalf("machine config %+v", cfg)
	}
}
