package doctor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
)

// GatewayBinary is the program that runs the host checks needing the compute
// drivers (driver autodetection, the Kubernetes probe, the VM driver's report): the
// CLI does not link the drivers, so it asks `openshell-gateway doctor --local -o json`.
const GatewayBinary = "openshell-gateway"

// LocalArgs is the hidden command line the CLI runs.
var LocalArgs = []string{"doctor", "--local", "-o", "json"}

// ErrNoReport says the gateway binary ran but did not print a report.
var ErrNoReport = errors.New("no report")

// Local runs every host check in the gateway binary find returns and gives back its
// findings. When the binary is missing or gives no report, the error says why; the
// caller reports it and falls back to the checks it has itself (Run).
func Local(ctx context.Context, find func() (string, error)) ([]Finding, error) {
	bin, err := find()
	if err != nil {
		return nil, err
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, LocalArgs...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run() // exit 1 = a check failed; the report says which
	var out []Finding
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil || out == nil {
		why := ErrNoReport
		if runErr != nil {
			why = runErr
		}
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return nil, errors.Join(why, errors.New(msg))
		}
		return nil, why
	}
	return out, nil
}

// MissingGateway is the finding shown when Local fails: what went wrong and how to
// get the driver checks back.
func MissingGateway(err error) Finding {
	return Finding{Check: "host.drivers", Status: Warn,
		Detail: "driver, Kubernetes and VM checks not run: " + strings.ReplaceAll(err.Error(), "\n", "; "),
		Fix:    "install " + GatewayBinary + " next to openshell (make build), or set OPENSHELL_GATEWAY_BIN"}
}
