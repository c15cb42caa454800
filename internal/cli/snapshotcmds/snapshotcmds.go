// Package snapshotcmds is the CLI side of snapshots: `openshell sandbox snapshot NAME`
// takes one of a running VM sandbox, `openshell snapshot list|delete` manage them,
// and `openshell sandbox create --from-snapshot SNAP` starts a sandbox from one.
// They call the gateway's Snapshots service (api/proto/snapshot.proto).
package snapshotcmds

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/api/snapshotv1"
)

// DialFunc connects to the gateway.
type DialFunc func(ctx context.Context) (*grpc.ClientConn, error)

// outputOf is the root's -o/--output value ("table" when absent).
func outputOf(cmd *cobra.Command) (string, error) {
	o, err := cmd.Flags().GetString("output")
	if err != nil || o == "" {
		o = "table"
	}
	switch o {
	case "table", "json":
		return o, nil
	}
	return "", fmt.Errorf("--output %q is not supported here; use table or json", o)
}

func client(ctx context.Context, dial DialFunc) (snapshotv1.SnapshotsClient, func(), error) {
	cc, err := dial(ctx)
	if err != nil {
		return nil, nil, err
	}
	return snapshotv1.NewSnapshotsClient(cc), func() { cc.Close() }, nil
}

var pj = protojson.MarshalOptions{UseProtoNames: true, Indent: "  "}

// writeJSON writes a message of the service, or plain data, as indented JSON.
func writeJSON(w io.Writer, v any) error {
	var b []byte
	var err error
	switch x := v.(type) {
	case *snapshotv1.Snapshot:
		b, err = pj.Marshal(x)
	case *snapshotv1.ListSnapshotsResponse:
		b, err = pj.Marshal(x)
	case *snapshotv1.DeleteSnapshotResponse:
		b, err = pj.Marshal(x)
	default:
		b, err = json.MarshalIndent(v, "", "  ")
	}
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// SandboxCommand is `sandbox snapshot NAME [--name SNAP]` (the workspace is the
// sandbox command's --workspace).
func SandboxCommand(dial DialFunc) *cobra.Command {
	var name string
	var timeout time.Duration
	var noWait bool
	cmd := &cobra.Command{
		Use:   "snapshot NAME [--name SNAP]",
		Short: "Snapshot a running VM sandbox (memory, devices and disk); it runs on",
		Long: `Snapshot a running VM sandbox: it is paused for a moment while its memory, device
state and writable disk are copied, then it runs on where it was. New sandboxes
start from the snapshot with 'openshell sandbox create --from-snapshot SNAP',
each with its own identity (sandbox id, token, randomness, clock) and its own copy
of the disk.

Needs the vm driver on a backend that can save VMs (QEMU with vsock_transport =
"virtio-serial" on hosts without /dev/vhost-vsock; 'openshell doctor' says).
Snapshots are files of the VM driver: they survive gateway restarts until
'openshell snapshot delete'.`,
		Example: `  openshell sandbox snapshot my-box --name base
  openshell sandbox create --from-snapshot base --name copy-1
  openshell snapshot list`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			out, err := outputOf(cmd)
			if err != nil {
				return err
			}
			cc, err := dial(cmd.Context())
			if err != nil {
				return err
			}
			defer cc.Close()
			c := snapshotv1.NewSnapshotsClient(cc)
			if out == "table" {
				fmt.Fprintf(os.Stderr, "snapshotting sandbox %s (pausing it to copy its memory and disk)...\n", args[0])
			}
			workspace, _ := cmd.Flags().GetString("workspace")
			resp, err := c.CreateSnapshot(cmd.Context(), &snapshotv1.CreateSnapshotRequest{Sandbox: args[0], Workspace: workspace, Name: name})
			if err != nil {
				return err
			}
			sn := resp.GetSnapshot()
			if !noWait {
				// The sandbox's session to the gateway drops for the pause; it is READY
				// again once its supervisor has reconnected.
				if err := waitReady(cmd.Context(), openshellv1.NewOpenShellClient(cc), args[0], workspace, timeout); err != nil {
					return fmt.Errorf("snapshot %s was taken, but: %w", sn.GetName(), err)
				}
			}
			if out == "json" {
				return writeJSON(cmd.OutOrStdout(), sn)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "snapshot %s of sandbox %s: %s on disk, sandbox paused %d ms\n",
				sn.GetName(), args[0], human(sn.GetBytes()), sn.GetPausedMs())
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "the snapshot's name (lower-case letters, digits, '-'); default NAME-<date>-<time>")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait for the sandbox to be READY again after the pause")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "return once the snapshot is taken, without waiting for the sandbox to be READY again")
	return cmd
}

// waitReady polls the sandbox until it is READY (its session back after the pause).
func waitReady(ctx context.Context, c openshellv1.OpenShellClient, name, workspace string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		r, err := c.GetSandbox(ctx, &openshellv1.GetSandboxRequest{Name: name, Workspace: workspace})
		ph := r.GetSandbox().GetStatus().GetPhase()
		switch {
		case err == nil && ph == openshellv1.SandboxPhase_SANDBOX_PHASE_READY:
			return nil
		case err == nil && ph == openshellv1.SandboxPhase_SANDBOX_PHASE_ERROR:
			return fmt.Errorf("sandbox %s is in ERROR after the snapshot; see openshell sandbox get %s", name, name)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("sandbox %s is not READY again within %s after the snapshot (phase %s, %v); follow it with openshell sandbox watch %s", name, timeout, ph, err, name)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Command is `snapshot list|delete`.
func Command(dial DialFunc) *cobra.Command {
	var workspace string
	root := &cobra.Command{Use: "snapshot", Aliases: []string{"snapshots"}, Short: "List and delete snapshots of VM sandboxes",
		Long: `Snapshots are taken with 'openshell sandbox snapshot NAME' and used with
'openshell sandbox create --from-snapshot SNAP'.`}
	root.PersistentFlags().StringVar(&workspace, "workspace", "", "workspace (default: the gateway's default workspace)")
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the snapshots of a workspace",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out, err := outputOf(cmd)
			if err != nil {
				return err
			}
			c, done, err := client(cmd.Context(), dial)
			if err != nil {
				return err
			}
			defer done()
			resp, err := c.ListSnapshots(cmd.Context(), &snapshotv1.ListSnapshotsRequest{Workspace: workspace})
			if err != nil {
				return err
			}
			if out == "json" {
				return writeJSON(cmd.OutOrStdout(), resp)
			}
			printTable(cmd.OutOrStdout(), resp.GetSnapshots(), time.Now())
			return nil
		},
	}
	del := &cobra.Command{
		Use:   "delete SNAP...",
		Short: "Delete snapshots (their files are removed; sandboxes made from them are not affected)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			out, err := outputOf(cmd)
			if err != nil {
				return err
			}
			c, done, err := client(cmd.Context(), dial)
			if err != nil {
				return err
			}
			defer done()
			var results []*snapshotv1.DeleteSnapshotResponse
			for _, n := range args {
				resp, err := c.DeleteSnapshot(cmd.Context(), &snapshotv1.DeleteSnapshotRequest{Name: n, Workspace: workspace})
				if err != nil {
					return err
				}
				results = append(results, resp)
				if out == "table" {
					fmt.Fprintf(cmd.OutOrStdout(), "snapshot %s deleted (%s freed)\n", n, human(resp.GetFreedBytes()))
				}
			}
			if out == "json" {
				type row struct {
					Name       string `json:"name"`
					Deleted    bool   `json:"deleted"`
					FreedBytes int64  `json:"freed_bytes"`
				}
				rows := make([]row, len(results))
				for i, r := range results {
					rows[i] = row{Name: args[i], Deleted: r.GetDeleted(), FreedBytes: r.GetFreedBytes()}
				}
				return writeJSON(cmd.OutOrStdout(), rows)
			}
			return nil
		},
	}
	root.AddCommand(list, del)
	return root
}

func printTable(w io.Writer, l []*snapshotv1.Snapshot, now time.Time) {
	if len(l) == 0 {
		fmt.Fprintln(w, "no snapshots (take one with: openshell sandbox snapshot NAME)")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSANDBOX\tIMAGE\tCPU\tMEMORY\tSIZE\tAGE")
	for _, s := range l {
		age := now.Sub(time.UnixMilli(s.GetCreatedAtMs())).Round(time.Second)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d MiB\t%s\t%s\n", s.GetName(), s.GetSourceSandboxName(), s.GetImage(),
			s.GetVcpus(), s.GetMemoryMib(), human(s.GetBytes()), age)
	}
	tw.Flush()
}

func human(b int64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%d B", b)
}
