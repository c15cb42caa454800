package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/openshell/openshell/drivers/kubernetes"
	"github.com/openshell/openshell/gateway/doctor"
	"github.com/openshell/openshell/gateway/driversel"
)

// Built-in checks. The VM driver's checks run in its own binary (doctor.VMCheck), so
// the CLI does not link the driver.
func init() {
	doctor.Register("driver-detect", func(ctx context.Context) []doctor.Finding {
		det, err := driversel.NewDetector().Detect(ctx)
		if err != nil {
			return []doctor.Finding{{Check: "driver.autodetect", Status: doctor.Info, Detail: "no container engine or Kubernetes found",
				Fix: "use --drivers vm, or start Docker/Podman"}}
		}
		return []doctor.Finding{{Check: "driver.autodetect", Status: doctor.OK, Detail: strings.TrimSpace(det.Driver + " " + det.Socket)}}
	})
	// A cluster is probed only when a kubeconfig (or an in-cluster config) is there.
	doctor.Register("kubernetes", func(ctx context.Context) []doctor.Finding {
		if !kubernetes.Configured(kubernetes.Config{}) {
			return []doctor.Finding{{Check: "kubernetes", Status: doctor.Info, Detail: "no kubeconfig or in-cluster config",
				Fix: "set KUBECONFIG to use --drivers kubernetes"}}
		}
		info, err := kubernetes.Probe(ctx, kubernetes.Config{}, 5*time.Second)
		if err != nil {
			return []doctor.Finding{{Check: "kubernetes", Status: doctor.Warn, Detail: err.Error()}}
		}
		return []doctor.Finding{{Check: "kubernetes", Status: doctor.OK, Detail: info}}
	})
	// The VM driver inspects the host itself (accel, vsock transport, kernel).
	doctor.Register("vm", doctor.VMCheck(func() (string, error) { return driversel.FindBinary(driversel.VMBinaryName, "") }))
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
			findings = append(findings, doctor.Run(ctx)...)
			out := cmd.OutOrStdout()
			if a.output != "table" {
				return printStructured(out, a.output, findings)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "CHECK\tSTATUS\tDETAIL\tFIX")
			failed := false
			for _, f := range findings {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", f.Check, f.Status, f.Detail, f.Fix)
				failed = failed || f.Status == doctor.Fail
			}
			tw.Flush()
			if failed {
				return &exitError{code: 1, err: fmt.Errorf("doctor found failures")}
			}
			return nil
		},
	}
}
