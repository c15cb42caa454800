// Package doctor collects host diagnostics for `openshell doctor`. The host checks
// run in openshell-gateway (`openshell-gateway doctor --local -o json`), which links
// the compute drivers and registers their checks (driver autodetection, the
// Kubernetes probe, the VM driver's own report via VMCheck) with Register; the CLI
// runs that command (Local), adds the gateway's health and prints the table. The GPU
// check reads only sysfs and is built in.
//
// A check is a function returning findings:
//
//	doctor.Register("vm", func(ctx context.Context) []doctor.Finding {
//		return []doctor.Finding{
//			{Check: "vm.accel", Status: doctor.OK, Detail: "kvm"},
//			{Check: "vm.kernel", Status: doctor.OK, Detail: "/usr/lib/openshell/vmlinux"},
//		}
//	})
package doctor

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"
	"text/tabwriter"
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

// WriteTable prints findings as the doctor's table and reports whether any failed.
func WriteTable(w io.Writer, findings []Finding) (failed bool, err error) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tSTATUS\tDETAIL\tFIX")
	for _, f := range findings {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", f.Check, f.Status, f.Detail, f.Fix)
		failed = failed || f.Status == Fail
	}
	return failed, tw.Flush()
}

// Failed reports whether any finding failed.
func Failed(findings []Finding) bool {
	return slices.ContainsFunc(findings, func(f Finding) bool { return f.Status == Fail })
}
