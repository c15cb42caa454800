package doctor

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/openshell/openshell/gateway/config"
)

// vmReport mirrors the JSON of `openshell-driver-vm doctor --json`.
type vmReport struct {
	Backend         string `json:"backend"`
	BackendReason   string `json:"backend_reason"`
	Accel           string `json:"accel"`
	AccelReason     string `json:"accel_reason"`
	Transport       string `json:"transport"`
	TransportReason string `json:"transport_reason"`
	Suspend         bool   `json:"suspend"`
	SuspendReason   string `json:"suspend_reason"`
	Kernel          string `json:"kernel"`
	Supervisor      string `json:"supervisor"`
	DefaultImage    string `json:"default_image"`
	Missing         []struct {
		What string `json:"what"`
		Fix  string `json:"fix"`
	} `json:"missing"`
	Pools []struct {
		Name         string  `json:"name"`
		Size         int     `json:"size"`
		Idle         int     `json:"idle"`
		Booting      int     `json:"booting"`
		Image        string  `json:"image"`
		IdleRSSBytes []int64 `json:"idle_rss_bytes"`
	} `json:"pools"`
	Snapshots *struct {
		Count int   `json:"count"`
		Bytes int64 `json:"bytes"`
	} `json:"snapshots"`
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
		args := []string{"doctor", "--json"}
		// The local gateway's VM driver state (default state dir): its warm pools.
		if dir := filepath.Join(config.Defaults().StateDir, "vm-driver"); dirExists(dir) {
			args = append(args, "--state-dir", dir)
		}
		cmd := exec.CommandContext(ctx, bin, args...)
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
			{Check: "vm.suspend", Status: Info, Detail: yesNo(r.Suspend) + " (" + r.SuspendReason + ")"},
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
		for _, p := range r.Pools {
			var rss []string
			for _, b := range p.IdleRSSBytes {
				rss = append(rss, fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)))
			}
			detail := fmt.Sprintf("%d idle, %d booting, size %d (%s); idle VMs' host RSS: %s", p.Idle, p.Booting, p.Size, p.Image, strings.Join(rss, ", "))
			out = append(out, Finding{Check: "vm.pool." + p.Name, Status: Info, Detail: detail})
		}
		if sn := r.Snapshots; sn != nil {
			out = append(out, Finding{Check: "vm.snapshots", Status: Info, Detail: fmt.Sprintf("%d snapshots, %.1f MiB on disk", sn.Count, float64(sn.Bytes)/(1<<20))})
		}
		return out
	}
}

func dirExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

func statusIf(ok bool) Status {
	if ok {
		return OK
	}
	return Warn
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
