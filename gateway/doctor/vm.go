package doctor

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"time"
)

// vmReport mirrors the JSON of `openshell-driver-vm doctor --json`.
type vmReport struct {
	Backend         string `json:"backend"`
	BackendReason   string `json:"backend_reason"`
	Accel           string `json:"accel"`
	AccelReason     string `json:"accel_reason"`
	Transport       string `json:"transport"`
	TransportReason string `json:"transport_reason"`
	Kernel          string `json:"kernel"`
	Supervisor      string `json:"supervisor"`
	DefaultImage    string `json:"default_image"`
	Missing         []struct {
		What string `json:"what"`
		Fix  string `json:"fix"`
	} `json:"missing"`
}

// VMCheck returns a check that runs `<driverBinary> doctor --json` (the VM driver's
// own host inspection) and reports accel, vsock transport, guest kernel and anything
// missing. find locates the driver binary; an error there is reported, not fatal.
func VMCheck(find func() (string, error)) Check {
	return func(ctx context.Context) []Finding {
		bin, err := find()
		if err != nil {
			return []Finding{{Check: "vm.driver", Status: Warn, Detail: err.Error(), Fix: "install openshell-driver-vm next to openshell-gateway to use --drivers vm"}}
		}
		ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		var stdout, stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, bin, "doctor", "--json")
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		runErr := cmd.Run() // exit 1 = something missing; the JSON says what
		var r vmReport
		if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
			detail := "could not read its report"
			if runErr != nil {
				detail = runErr.Error() + ": " + stderr.String()
			}
			return []Finding{{Check: "vm.driver", Status: Warn, Detail: bin + ": " + detail}}
		}
		na := func(s string) string {
			if s == "" {
				return "not found"
			}
			return s
		}
		out := []Finding{
			{Check: "vm.driver", Status: OK, Detail: bin},
			{Check: "vm.accel", Status: Info, Detail: r.Accel + " (" + r.AccelReason + ")"},
			{Check: "vm.backend", Status: Info, Detail: r.Backend + " (" + r.BackendReason + ")"},
			{Check: "vm.vsock_transport", Status: Info, Detail: r.Transport + " (" + r.TransportReason + ")"},
			{Check: "vm.kernel", Status: statusIf(r.Kernel != ""), Detail: na(r.Kernel)},
			{Check: "vm.supervisor", Status: statusIf(r.Supervisor != ""), Detail: na(r.Supervisor)},
			{Check: "vm.default_image", Status: Info, Detail: r.DefaultImage},
		}
		if r.Accel == "kvm" {
			out[1].Status = OK
		}
		for _, m := range r.Missing {
			out = append(out, Finding{Check: "vm.missing", Status: Warn, Detail: m.What, Fix: m.Fix})
		}
		return out
	}
}

func statusIf(ok bool) Status {
	if ok {
		return OK
	}
	return Warn
}
