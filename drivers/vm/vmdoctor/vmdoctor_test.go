package vmdoctor

import (
	"testing"

	"github.com/openshell/openshell/drivers/vm"
	"github.com/openshell/openshell/gateway/doctor"
)

func TestFindings(t *testing.T) {
	fs := Findings(vm.Report{Accel: "tcg", AccelReason: "no vmx", Transport: "vhost-user-vsock", Kernel: "/k",
		Missing: []vm.Missing{{What: "openshell-sandbox", Fix: "make build"}}})
	byCheck := map[string]doctor.Finding{}
	for _, f := range fs {
		byCheck[f.Check] = f
	}
	if byCheck["vm.accel"].Status != doctor.Warn || byCheck["vm.vsock_transport"].Status != doctor.OK || byCheck["vm.kernel"].Detail != "/k" {
		t.Errorf("findings %+v", fs)
	}
	if m := byCheck["vm.missing"]; m.Status != doctor.Fail || m.Fix != "make build" {
		t.Errorf("missing finding %+v", m)
	}
	// The real check runs on this host without panicking and reports accel.
	if got := Check(t.Context()); len(got) < 2 || got[0].Check != "vm.accel" {
		t.Errorf("Check() = %+v", got)
	}
}
