package providercmds

import (
	"fmt"

	"github.com/spf13/cobra"

	pb "github.com/openshell/openshell/api/openshellv1"
)

// SandboxCommand returns `provider` for under `sandbox`: attach, detach and list the
// providers of one sandbox. The supervisor reads its providers when it starts, so a
// running sandbox sees a change after `openshell sandbox stop` and `start`.
func SandboxCommand(dial DialFunc) *cobra.Command {
	client := clientOf(dial)
	root := &cobra.Command{Use: "provider", Short: "Attach, detach and list a sandbox's providers"}
	var workspace string
	root.PersistentFlags().StringVar(&workspace, "workspace", "", "the sandbox's workspace (default: default)")
	change := func(use, short string, attach bool) *cobra.Command {
		return &cobra.Command{
			Use:   use + " SANDBOX PROVIDER",
			Short: short,
			Args:  cobra.ExactArgs(2),
			RunE: func(cmd *cobra.Command, args []string) error {
				ctx := cmd.Context()
				c, err := client(ctx)
				if err != nil {
					return err
				}
				sb, prov := args[0], args[1]
				var changed bool
				if attach {
					resp, err := c.AttachSandboxProvider(ctx, &pb.AttachSandboxProviderRequest{SandboxName: sb, ProviderName: prov, Workspace: workspace})
					if err != nil {
						return rpcError(fmt.Sprintf("attach provider %s to sandbox %s", prov, sb), err)
					}
					changed = resp.GetAttached()
				} else {
					resp, err := c.DetachSandboxProvider(ctx, &pb.DetachSandboxProviderRequest{SandboxName: sb, ProviderName: prov, Workspace: workspace})
					if err != nil {
						return rpcError(fmt.Sprintf("detach provider %s from sandbox %s", prov, sb), err)
					}
					changed = resp.GetDetached()
				}
				w := cmd.OutOrStdout()
				switch {
				case !changed && attach:
					fmt.Fprintf(w, "provider %s was already attached to sandbox %s\n", prov, sb)
				case !changed:
					fmt.Fprintf(w, "provider %s was not attached to sandbox %s\n", prov, sb)
				default:
					fmt.Fprintf(w, "provider %s %sed (sandbox %s); a running sandbox picks this up when it restarts\n", prov, use, sb)
				}
				return nil
			},
		}
	}
	var output string
	list := &cobra.Command{
		Use:   "list SANDBOX",
		Short: "List the providers attached to a sandbox (credential keys only)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			ctx := cmd.Context()
			c, err := client(ctx)
			if err != nil {
				return err
			}
			resp, err := c.ListSandboxProviders(ctx, &pb.ListSandboxProvidersRequest{SandboxName: args[0], Workspace: workspace})
			if err != nil {
				return rpcError("list providers of sandbox "+args[0], err)
			}
			return printProviders(cmd.OutOrStdout(), output, resp.GetProviders(), true)
		},
	}
	list.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	root.AddCommand(change("attach", "Attach a provider to a sandbox", true), change("detach", "Detach a provider from a sandbox", false), list)
	return root
}
