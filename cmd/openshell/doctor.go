package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/openshell/openshell/gateway/doctor"
	"github.com/openshell/openshell/internal/binpath"
)

// findGateway locates openshell-gateway: $OPENSHELL_GATEWAY_BIN, else next to this
// binary, else PATH.
//
// The host checks that need the compute drivers (autodetection, the Kubernetes probe,
// the VM driver's report) run in openshell-gateway, which links the drivers; the CLI
// merges its report. Without that binary the CLI says so and runs the checks it has
// (the GPU inventory).
func findGateway() (string, error) {
	override := os.Getenv(gatewayBinEnv)
	p, err := binpath.Find(doctor.GatewayBinary, override)
	switch {
	case err == nil:
		return p, nil
	case override != "":
		return "", fmt.Errorf("%s=%s: no such file; point it at openshell-gateway or unset it", gatewayBinEnv, override)
	}
	return "", fmt.Errorf("%w, or set %s", err, gatewayBinEnv)
}

// hostFindings is the host part of the report.
func hostFindings(ctx context.Context) []doctor.Finding {
	found, err := doctor.Local(ctx, findGateway)
	if err != nil {
		return append([]doctor.Finding{doctor.MissingGateway(err)}, doctor.Run(ctx)...)
	}
	return found
}

func (a *app) doctorCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "doctor",
		Short: "Check this host and the gateway: driver, virtualisation, vsock, guest kernel",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(a.output); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 20*time.Second)
			defer cancel()
			findings := []doctor.Finding{}
			if resp, driver, err := a.health(ctx); err == nil {
				findings = append(findings, doctor.Finding{Check: "gateway", Status: doctor.OK,
					Detail: fmt.Sprintf("%s, version %s, driver %s", resp.GetStatus(), resp.GetVersion(), driver)})
			} else {
				findings = append(findings, doctor.Finding{Check: "gateway", Status: doctor.Warn, Detail: humanize(err, a.gateway),
					Fix: "openshell gateway start"})
			}
			findings = append(findings, hostFindings(ctx)...)
			out := cmd.OutOrStdout()
			if a.output != "table" {
				return printStructured(out, a.output, findings)
			}
			failed, err := doctor.WriteTable(out, findings)
			if err != nil {
				return err
			}
			if failed {
				return &exitError{code: 1, err: fmt.Errorf("doctor found failures")}
			}
			return nil
		},
	}
}
