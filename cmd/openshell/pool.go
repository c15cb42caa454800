package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"text/tabwriter"
	"time"

	units "github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/openshell/openshell/api/poolv1"
)

// `openshell pool`: warm pools of the vm driver, VMs booted ahead of time so that a
// create of their shape is Ready at once (api/proto/pool.proto).

func (a *app) poolClient(ctx context.Context) (poolv1.PoolsClient, func(), error) {
	cc, err := a.dial(ctx)
	if err != nil {
		return nil, nil, err
	}
	return poolv1.NewPoolsClient(cc), func() { cc.Close() }, nil
}

func (a *app) poolCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "pool",
		Aliases: []string{"pools"},
		Short:   "Warm pools: VMs booted ahead of time, so that sandboxes of their shape start at once",
		Long: `A warm pool keeps VMs of one shape (image, CPUs, memory, disk size) booted to the
point where their supervisor waits for a sandbox. 'openshell sandbox create' with
the same --from, --cpu and --memory (and disk size) takes one of them instead of
booting a VM, and the pool boots a replacement in the background. Each VM serves
one sandbox only. A VM counts as idle once its guest's warm-up is over too (the
identity-free part of a start, done while it waits); until then it counts as
booting, and a create takes one only when no idle VM is left.

Pools belong to the vm driver. They are made here or in the gateway config
([drivers.vm.pools.NAME]); both survive gateway restarts.`,
	}
	cmd.AddCommand(a.poolCreate(), a.poolList(), a.poolDelete())
	return cmd
}

func (a *app) poolCreate() *cobra.Command {
	var (
		req           poolv1.CreatePoolRequest
		size          int
		wait          bool
		timeout       time.Duration
		image, image2 string
	)
	cmd := &cobra.Command{
		Use:   "create [NAME] --image IMAGE [--cpu N] [--memory M] [--disk-size D] --size N",
		Short: "Make a warm pool of N VMs for sandboxes of one shape",
		Example: `  openshell pool create --image ubuntu:24.04 --cpu 2 --memory 1Gi --size 3
  openshell pool create small --size 2 --wait        # the driver's default image and shape
  openshell sandbox create --from ubuntu:24.04 --cpu 2 --memory 1Gi   # takes a pooled VM`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(a.output); err != nil {
				return err
			}
			if !cmd.Flags().Changed("size") {
				return fmt.Errorf("--size: say how many idle VMs the pool keeps (1 to 64)")
			}
			if image2 != "" {
				if image != "" && image != image2 {
					return fmt.Errorf("--image %q and --from %q: give one of them", image, image2)
				}
				image = image2
			}
			ctx := cmd.Context()
			if len(args) == 1 {
				req.Name = args[0]
			} else {
				req.Name = defaultPoolName(image)
			}
			resolved, err := a.resolveImage(ctx, image, req.Name, "--image", os.Stderr)
			if err != nil {
				return err
			}
			req.Image, req.Size = resolved, int32(size)
			c, done, err := a.poolClient(ctx)
			if err != nil {
				return err
			}
			defer done()
			resp, err := c.CreatePool(ctx, &req)
			if err != nil {
				return fmt.Errorf("create pool %s: %w", req.Name, err)
			}
			p := resp.GetPool()
			fmt.Fprintf(os.Stderr, "pool %s created: %d VMs of %s, %d CPU, %d MiB, boot in the background\n", p.GetName(), p.GetSize(), p.GetImage(), p.GetVcpus(), p.GetMemoryMib())
			if wait {
				if p, err = waitPoolFull(ctx, c, p.GetName(), timeout, os.Stderr); err != nil {
					return err
				}
			}
			if a.output != "table" {
				return printStructured(cmd.OutOrStdout(), a.output, p)
			}
			return printPools(cmd.OutOrStdout(), []*poolv1.Pool{p})
		},
	}
	f := cmd.Flags()
	f.StringVar(&image, "image", "", "the sandbox `IMAGE`, as 'sandbox create --from' takes it (default: the driver's default image)")
	f.StringVar(&image2, "from", "", "same as --image")
	f.StringVar(&req.Cpu, "cpu", "", "CPUs of each VM, as 'sandbox create --cpu' takes them (default: the driver's)")
	f.StringVar(&req.Memory, "memory", "", "memory of each VM, as 'sandbox create --memory' takes it, e.g. 1Gi (default: the driver's)")
	f.StringVar(&req.DiskSize, "disk-size", "", "writable disk of each VM, as 'sandbox create --disk-size' takes it, e.g. 20Gi (default: the driver's)")
	f.IntVar(&size, "size", 0, "idle VMs the pool keeps (1 to 64)")
	f.BoolVar(&wait, "wait", false, "wait until every VM of the pool is idle (booted and warmed up), printing progress")
	f.DurationVar(&timeout, "timeout", 15*time.Minute, "how long --wait waits")
	return cmd
}

var notPoolName = regexp.MustCompile(`[^a-z0-9-]+`)

// defaultPoolName names a pool after its image's last path element ("ubuntu:24.04"
// → "ubuntu-24-04"); "default" for the driver's default image.
func defaultPoolName(image string) string {
	if i := strings.LastIndex(image, "/"); i >= 0 {
		image = image[i+1:]
	}
	n := strings.Trim(notPoolName.ReplaceAllString(strings.ToLower(image), "-"), "-")
	if len(n) > 32 {
		n = strings.TrimRight(n[:32], "-")
	}
	if n == "" {
		return "default"
	}
	return n
}

// waitPoolFull follows pool name until it has its size of idle VMs, printing each
// change of its counts.
func waitPoolFull(ctx context.Context, c poolv1.PoolsClient, name string, timeout time.Duration, progress io.Writer) (*poolv1.Pool, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	last := ""
	for {
		resp, err := c.ListPools(ctx, &poolv1.ListPoolsRequest{})
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("pool %s is not full after %s; it keeps booting: follow it with `openshell pool list`", name, timeout)
			}
			return nil, err
		}
		var p *poolv1.Pool
		for _, x := range resp.GetPools() {
			if x.GetName() == name {
				p = x
			}
		}
		if p == nil {
			return nil, fmt.Errorf("pool %s is gone (deleted while waiting?)", name)
		}
		line := fmt.Sprintf("pool %s: %d of %d VMs idle, %d booting", name, p.GetIdle(), p.GetSize(), p.GetBooting())
		if line != last {
			fmt.Fprintln(progress, line)
			last = line
		}
		if p.GetIdle() >= p.GetSize() {
			return p, nil
		}
		if e := p.GetLastError(); e != "" {
			return nil, fmt.Errorf("pool %s: a VM did not come up: %s\nthe pool keeps trying, backing off; fix the cause and follow it with `openshell pool list`, or `openshell pool delete %s`", name, e, name)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("pool %s is not full after %s (%d of %d VMs idle); it keeps booting: follow it with `openshell pool list`", name, timeout, p.GetIdle(), p.GetSize())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

func (a *app) poolList() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the warm pools: shape, idle and booting VMs, their host memory",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(a.output); err != nil {
				return err
			}
			c, done, err := a.poolClient(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			resp, err := c.ListPools(cmd.Context(), &poolv1.ListPoolsRequest{})
			if err != nil {
				return err
			}
			if a.output != "table" {
				return printStructured(cmd.OutOrStdout(), a.output, resp)
			}
			if len(resp.GetPools()) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "no warm pools (make one with: openshell pool create --image IMAGE --size N)")
				return nil
			}
			return printPools(cmd.OutOrStdout(), resp.GetPools())
		},
	}
}

func printPools(w io.Writer, pools []*poolv1.Pool) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSOURCE\tIDLE\tBOOTING\tCLAIMED\tIMAGE\tCPU\tMEMORY\tDISK\tIDLE RSS\tLAST ERROR")
	for _, p := range pools {
		var rss int64
		for _, b := range p.GetIdleRssBytes() {
			rss += b
		}
		fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%d\t%d\t%s\t%d\t%d MiB\t%s\t%s\t%s\n", p.GetName(), p.GetSource(), p.GetIdle(), p.GetSize(),
			p.GetBooting(), p.GetClaimed(), p.GetImage(), p.GetVcpus(), p.GetMemoryMib(), units.IBytes(uint64(p.GetDiskSizeBytes())),
			units.IBytes(uint64(rss)), firstLine(p.GetLastError()))
	}
	return tw.Flush()
}

func (a *app) poolDelete() *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME...",
		Short: "Delete warm pools made with `pool create`; their idle VMs stop (sandboxes that took one are not affected)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(a.output); err != nil {
				return err
			}
			c, done, err := a.poolClient(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			var results []*poolv1.DeletePoolResponse
			for _, n := range args {
				resp, err := c.DeletePool(cmd.Context(), &poolv1.DeletePoolRequest{Name: n})
				if err != nil {
					return fmt.Errorf("delete pool %s: %w", n, err)
				}
				results = append(results, resp)
				if a.output == "table" {
					fmt.Fprintf(cmd.OutOrStdout(), "pool %s deleted (%d VMs stopped)\n", n, resp.GetStoppedVms())
				}
			}
			if a.output != "table" {
				type row struct {
					Name       string `json:"name" yaml:"name"`
					Deleted    bool   `json:"deleted" yaml:"deleted"`
					StoppedVMs int32  `json:"stopped_vms" yaml:"stopped_vms"`
				}
				rows := make([]row, len(results))
				for i, r := range results {
					rows[i] = row{Name: args[i], Deleted: r.GetDeleted(), StoppedVMs: r.GetStoppedVms()}
				}
				return printStructured(cmd.OutOrStdout(), a.output, rows)
			}
			return nil
		},
	}
}
