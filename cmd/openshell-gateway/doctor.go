package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/openshell/openshell/drivers/kubernetes"
	"github.com/openshell/openshell/gateway/doctor"
	"github.com/openshell/openshell/gateway/driversel"
)

// The host checks that need the compute drivers. They live here, not in the CLI, so
// the CLI does not link the drivers: `openshell doctor` runs `openshell-gateway
// doctor --local -o json` and merges the report.
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

// doctorCmd is hidden: users run `openshell doctor`, which adds the gateway's health.
func doctorCmd() *cobra.Command {
	var local bool
	var output string
	cmd := &cobra.Command{
		Use:    "doctor",
		Short:  "Run this host's checks (driver detection, Kubernetes, VM driver, GPUs); used by `openshell doctor`",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !local {
				return errors.New("only the host checks run here: pass --local, or use `openshell doctor` for the gateway's health as well")
			}
			if output != "table" && output != "json" {
				return fmt.Errorf("--output %q is not supported; use table or json", output)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 20*time.Second)
			defer cancel()
			findings := doctor.Run(ctx)
			if findings == nil {
				findings = []doctor.Finding{}
			}
			out := cmd.OutOrStdout()
			if output == "json" {
				if err := json.NewEncoder(out).Encode(findings); err != nil {
					return err
				}
			} else if _, err := doctor.WriteTable(out, findings); err != nil {
				return err
			}
			if doctor.Failed(findings) {
				return errChecksFailed
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&local, "local", false, "run the host checks only (no gateway is contacted)")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}

// errChecksFailed ends the process with status 1 after the report is printed.
var errChecksFailed = errors.New("doctor found failures")
