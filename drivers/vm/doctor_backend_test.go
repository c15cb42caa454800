package vm_test

import (
	"strings"
	"testing"

	"github.com/openshell/openshell/drivers/vm"
	"github.com/openshell/openshell/vmm"
	"github.com/openshell/openshell/vmm/libkrun"
)

// TestDoctorNamesBackend: doctor says which backend sandboxes would use here and
// why; on a Linux host without libkrun or hardware KVM that is QEMU, with the reason
// libkrun was passed over.
func TestDoctorNamesBackend(t *testing.T) {
	r := vm.Doctor(t.Context(), vm.Config{})
	if r.Backend == "" || r.BackendReason == "" {
		t.Fatalf("doctor names no backend: %+v", r)
	}
	t.Logf("backend %s (%s)", r.Backend, r.BackendReason)
	if libkrun.Available() != nil {
		if r.Backend != "qemu" || !strings.Contains(r.BackendReason, "libkrun") {
			t.Fatalf("without libkrun the backend is %q (%s), want qemu with the reason libkrun was passed over", r.Backend, r.BackendReason)
		}
		if !vmm.DetectKVM().Usable && !strings.Contains(r.BackendReason, "hardware KVM") {
			t.Fatalf("reason does not say hardware KVM is missing: %s", r.BackendReason)
		}
		// Asking for libkrun here is reported as missing, with the way out.
		r = vm.Doctor(t.Context(), vm.Config{Backend: "libkrun"})
		found := false
		for _, m := range r.Missing {
			found = found || strings.Contains(m.What, "libkrun was requested") && strings.Contains(m.Fix, "--backend auto")
		}
		if !found {
			t.Fatalf("requested libkrun not reported as missing: %+v", r.Missing)
		}
	}
}

func TestConfigBackendValidated(t *testing.T) {
	c := vm.Config{GatewayEndpoint: "127.0.0.1:1", StateDir: "/tmp/x", Backend: "hyperv"}.WithDefaults()
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "backend (--backend)") || !strings.Contains(err.Error(), "auto, qemu, libkrun, vz") {
		t.Fatalf("Validate with backend hyperv = %v", err)
	}
	if d := (vm.Config{}).WithDefaults(); d.Backend != "auto" {
		t.Fatalf("default backend %q", d.Backend)
	}
}
