// Package vmdoctor registers the VM driver's host checks with `openshell doctor`.
// cmd/openshell imports it for its side effect:
//
//	import _ "github.com/openshell/openshell/drivers/vm/vmdoctor"
package vmdoctor

import (
	"context"

	"github.com/openshell/openshell/drivers/vm"
	"github.com/openshell/openshell/gateway/doctor"
)

func init() { doctor.Register("vm", Check) }

// Check turns vm.Doctor's report (default configuration) into doctor findings.
func Check(ctx context.Context) []doctor.Finding {
	return Findings(vm.Doctor(ctx, vm.Config{}))
}

// Findings converts a report.
func Findings(r vm.Report) []doctor.Finding {
	accel := doctor.Finding{Check: "vm.accel", Status: doctor.OK, Detail: r.Accel + ": " + r.AccelReason}
	if r.Accel != "kvm" {
		accel.Status = doctor.Warn
		accel.Fix = "VMs run under software emulation (slow); enable hardware virtualisation (vmx/svm) for KVM"
	}
	tr := doctor.Finding{Check: "vm.vsock_transport", Status: doctor.OK, Detail: r.Transport + ": " + r.TransportReason}
	if r.Transport == "virtio-serial" {
		tr.Status = doctor.Warn
		tr.Fix = "run scripts/setup-vm-host.sh for the vsock backend (virtio-serial works, vsock is faster)"
	}
	out := []doctor.Finding{accel, tr}
	if r.Kernel != "" {
		out = append(out, doctor.Finding{Check: "vm.kernel", Status: doctor.OK, Detail: r.Kernel})
	}
	if r.Supervisor != "" {
		out = append(out, doctor.Finding{Check: "vm.supervisor", Status: doctor.OK, Detail: r.Supervisor})
	}
	out = append(out, doctor.Finding{Check: "vm.default_image", Status: doctor.Info, Detail: r.DefaultImage})
	for _, m := range r.Missing {
		out = append(out, doctor.Finding{Check: "vm.missing", Status: doctor.Fail, Detail: m.What, Fix: m.Fix})
	}
	return out
}
