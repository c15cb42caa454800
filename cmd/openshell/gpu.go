package main

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/internal/gpu"
)

// GPU flags of `sandbox create`, `openshell gpu list` and the doctor's GPU checks.

// gpuBare is what --gpu holds when given without a count: one GPU, unless the next
// argument is a count (`--gpu 2`, see takeGPUCount).
const gpuBare = "1"

// gpuDriverConfigKey is the driver_config key every GPU-capable driver reads the
// device ids from (its own object: vm = PCI addresses, docker/podman = CDI ids).
const gpuDriverConfigKey = "gpu_devices"

// gpuDeviceDrivers are the drivers whose driver_config gets the device ids; the
// gateway hands each driver only its own object.
var gpuDeviceDrivers = []string{"vm", "docker", "podman"}

// gpuCountFlag is --gpu: a count of at least 1, or bare.
type gpuCountFlag struct{ v *string }

func (f gpuCountFlag) String() string { return *f.v }
func (f gpuCountFlag) Type() string   { return "count" }
func (f gpuCountFlag) Set(s string) error {
	if n, err := strconv.Atoi(s); err != nil || n < 1 {
		return fmt.Errorf("the GPU count must be a whole number of at least 1 (leave --gpu out for none)")
	}
	*f.v = s
	return nil
}

// addGPUFlags registers --gpu and --gpu-device on `sandbox create`.
func addGPUFlags(cmd *cobra.Command, count *string, devices *[]string) {
	f := cmd.Flags()
	f.Var(gpuCountFlag{count}, "gpu", "request GPUs: --gpu for one, --gpu `N` for N")
	f.Lookup("gpu").NoOptDefVal = gpuBare
	f.StringArrayVar(devices, "gpu-device", nil, "request a GPU by `ID` (repeatable): a PCI address for the vm driver (see openshell gpu list), a CDI device for docker/podman (0, or nvidia.com/gpu=0)")
	cmd.SetFlagErrorFunc(gpuFlagError)
}

var negativeArg = regexp.MustCompile(`unknown shorthand flag: '.' in (-[0-9]+)$`)

// gpuFlagError makes `--gpu -1` (which the flag parser reads as the flags -1) say
// what is wrong.
func gpuFlagError(_ *cobra.Command, err error) error {
	if m := negativeArg.FindStringSubmatch(err.Error()); m != nil {
		return fmt.Errorf("--gpu %s: the GPU count must be a whole number of at least 1 (leave --gpu out for none)", m[1])
	}
	return err
}

// takeGPUCount reads `--gpu N`: a bare --gpu followed by a number before `--` takes
// that number as its count (the flag parser cannot, since the count is optional).
func takeGPUCount(cmd *cobra.Command, count *string, args []string) []string {
	if *count != gpuBare || !cmd.Flags().Changed("gpu") {
		return args
	}
	if dash := cmd.ArgsLenAtDash(); len(args) > 0 && dash != 0 {
		if _, err := strconv.Atoi(args[0]); err == nil {
			*count = args[0]
			return args[1:]
		}
	}
	return args
}

// applyGPU puts a GPU request into the spec: the count in
// resource_requirements.gpu.count, the ids in each GPU driver's driver_config.
func applyGPU(spec *openshellv1.SandboxSpec, count string, devices []string) error {
	if count == "" && len(devices) == 0 {
		return nil
	}
	for _, d := range devices {
		if d == "" || strings.ContainsAny(d, " \t,\n") {
			return fmt.Errorf("--gpu-device %q is not a device id: give one PCI address (0000:01:00.0) or CDI device (nvidia.com/gpu=0) per flag", d)
		}
	}
	n := len(devices)
	if count != "" {
		c, err := strconv.Atoi(count)
		if err != nil || c < 1 {
			return fmt.Errorf("--gpu %s: the GPU count must be a whole number of at least 1 (leave --gpu out for none)", count)
		}
		if len(devices) > 0 && c != len(devices) {
			return fmt.Errorf("--gpu %d with %d --gpu-device: give the count or the devices, or make them agree", c, len(devices))
		}
		n = c
	}
	u := uint32(n)
	spec.ResourceRequirements = &openshellv1.ResourceRequirements{Gpu: &openshellv1.GpuResourceRequirements{Count: &u}}
	if len(devices) == 0 {
		return nil
	}
	ids := make([]any, len(devices))
	for i, d := range devices {
		ids[i] = d
	}
	for _, drv := range gpuDeviceDrivers {
		v, err := structpb.NewList(ids) // each driver's object its own copy
		if err != nil {
			return err
		}
		setDriverConfig(spec, drv, gpuDriverConfigKey, structpb.NewListValue(v))
	}
	return nil
}

func (a *app) gpuCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "gpu", Short: "GPUs of this host (for the vm driver's passthrough)"}
	var sysfs, proc, stateDir string
	list := &cobra.Command{
		Use:   "list",
		Short: "List this host's GPUs and whether each can be passed through to a VM sandbox",
		Long: `List every display/3D PCI function of this host with its vendor and device, the
driver in use, NUMA node, IOMMU group and its other members, and whether it can be
given to a VM sandbox; when it cannot, why and how to fix it. Only reads sysfs.`,
		Example: "  openshell gpu list\n  openshell gpu list -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(a.output); err != nil {
				return err
			}
			m := gpu.New(gpu.Config{Sysfs: sysfs, Proc: proc, StateDir: stateDir})
			inv, err := m.Inventory()
			if err != nil {
				// An unreadable journal (another user's) still leaves the inventory.
				fmt.Fprintf(os.Stderr, "warning: %v; not showing which sandbox holds which GPU\n", err)
				if inv, err = gpu.Scan(gpu.ScanOptions{Sysfs: sysfs, Proc: proc}); err != nil {
					return err
				}
			}
			if a.output != "table" {
				return printStructured(cmd.OutOrStdout(), a.output, inv)
			}
			return printGPUTable(cmd, inv)
		},
	}
	f := list.Flags()
	f.StringVar(&sysfs, "sysfs-root", gpu.DefaultSysfs, "sysfs to read (tests use recorded trees)")
	f.StringVar(&proc, "proc-root", gpu.DefaultProc, "procfs to read")
	f.StringVar(&stateDir, "gpu-state-dir", gpu.DefaultStateDir, "the VM driver's GPU journal (which sandbox holds which GPU)")
	_ = f.MarkHidden("sysfs-root")
	_ = f.MarkHidden("proc-root")
	cmd.AddCommand(list)
	return cmd
}

func printGPUTable(cmd *cobra.Command, inv *gpu.Inventory) error {
	out := cmd.OutOrStdout()
	if len(inv.GPUs) == 0 {
		fmt.Fprintf(out, "no GPU found in %s\n", inv.Sysfs)
		return nil
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tDEVICE\tCLASS\tDRIVER\tNUMA\tIOMMU GROUP\tPASSTHROUGH")
	for _, g := range inv.GPUs {
		group := "-"
		if g.IOMMUGroup != "" {
			group = g.IOMMUGroup
			var ms []string
			for _, m := range g.Members {
				ms = append(ms, m.BDF+" "+m.Role)
			}
			if len(ms) > 0 {
				group += " (" + strings.Join(ms, ", ") + ")"
			}
		}
		drv := g.Driver
		if drv == "" {
			drv = "-"
		}
		pass := "yes"
		if !g.Passthrough {
			pass = "no"
		}
		fmt.Fprintf(tw, "%s\t%04x:%04x\t%s\t%s\t%d\t%s\t%s\n", g.BDF, g.Vendor, g.Device, g.ClassName(), drv, g.NUMANode, group, pass)
	}
	tw.Flush()
	for _, g := range inv.GPUs {
		for _, r := range g.Reasons {
			fmt.Fprintf(out, "\n%s: %s\n  fix: %s\n", g.BDF, r.Message, r.Fix)
		}
	}
	if inv.IOMMU && !inv.VFIO {
		fmt.Fprintln(out, "\nthe vfio-pci driver is not loaded\n  fix: modprobe vfio-pci")
	}
	return nil
}
