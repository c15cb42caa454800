// Package doctor collects host diagnostics for `openshell doctor`. Built-in checks
// cover the gateway and driver detection; driver packages add their own checks with
// Register from an init function (the VM driver reports accel, vsock transport and
// guest kernel), and cmd/openshell imports that package for its side effect.
//
// Extension point for the VM driver:
//
//	func init() {
//		doctor.Register("vm", func(ctx context.Context) []doctor.Finding {
//			return []doctor.Finding{
//				{Check: "vm.accel", Status: doctor.OK, Detail: "kvm"},
//				{Check: "vm.vsock_transport", Status: doctor.OK, Detail: "vhost-user"},
//				{Check: "vm.kernel", Status: doctor.OK, Detail: "/usr/lib/openshell/vmlinux"},
//			}
//		})
//	}
package doctor

import (
	"context"
	"maps"
	"slices"
	"sync"
)

// Status of a finding.
type Status string

const (
	OK   Status = "ok"
	Warn Status = "warn"
	Fail Status = "fail"
	Info Status = "info"
)

// Finding is one line of the report. Fix says what to do when Status is not OK.
type Finding struct {
	Check  string `json:"check"`
	Status Status `json:"status"`
	Detail string `json:"detail,omitempty"`
	Fix    string `json:"fix,omitempty"`
}

// Check produces findings; it must honour ctx and never print.
type Check func(ctx context.Context) []Finding

var (
	mu     sync.Mutex
	checks = map[string]Check{}
)

// Register adds a named check (replacing one of the same name).
func Register(name string, c Check) {
	mu.Lock()
	defer mu.Unlock()
	checks[name] = c
}

// Run runs every registered check in name order.
func Run(ctx context.Context) []Finding {
	mu.Lock()
	names := slices.Sorted(maps.Keys(checks))
	cs := make([]Check, len(names))
	for i, n := range names {
		cs[i] = checks[n]
	}
	mu.Unlock()
	var out []Finding
	for _, c := range cs {
		out = append(out, c(ctx)...)
	}
	return out
}
