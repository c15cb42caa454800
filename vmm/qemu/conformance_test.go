package qemu_test

import (
	"testing"

	"github.com/openshell/openshell/vmm"
	"github.com/openshell/openshell/vmm/qemu"
	"github.com/openshell/openshell/vmm/vmmtest"
)

// TestConformance runs the vmm conformance suite on real QEMU guests (KVM where the
// host has it, TCG here) through the backend-neutral Config: the guest is testinit,
// which dials PortBootstrap, answers, and powers off on "bye" or the power button.
func TestConformance(t *testing.T) {
	_, _, image := requireVM(t)
	vmmtest.Run(t, vmmtest.Harness{
		Features: qemu.Features(),
		New: func(t *testing.T, name string) vmm.Machine {
			cfg := baseConfig(t, "conf-"+name, vmm.Disk{Path: image, ReadOnly: true}, vmm.Disk{Path: writableDisk(t)})
			return newMachine(t, cfg)
		},
		BootTimeout: bootTimeout,
	})
}
