package main

import (
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/openshell/openshell/api/openshellv1"
)

func (a *app) serviceCmd() *cobra.Command {
	var workspace string
	cmd := &cobra.Command{
		Use:   "service",
		Short: "Expose HTTP services running in sandboxes through the gateway",
		Long: `A service is a named port inside a sandbox that the gateway routes HTTP to: its URL
(http://127.0.0.1:<services port>/<sandbox>/<service>/, or
http://<service>--<sandbox>.<domain>:<port>/ with --domain when the gateway has a
services_domain) reaches 127.0.0.1:<port> inside the sandbox through its supervisor.`,
	}
	cmd.PersistentFlags().StringVar(&workspace, "workspace", "", "workspace (default: the gateway's default workspace)")
	cmd.AddCommand(a.serviceExpose(&workspace), a.serviceGet(&workspace), a.serviceList(&workspace), a.serviceDelete(&workspace))
	return cmd
}

func (a *app) serviceExpose(ws *string) *cobra.Command {
	var port uint32
	var domain bool
	cmd := &cobra.Command{
		Use:               "expose SANDBOX NAME --port N",
		Short:             "Expose port N inside SANDBOX as service NAME and print its URL",
		Example:           "  openshell service expose dev web --port 8080",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: a.completeSandboxes(false),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(a.output); err != nil {
				return err
			}
			if port == 0 || port > 65535 {
				return fmt.Errorf("--port %d is out of range; give the port the service listens on inside the sandbox (1-65535)", port)
			}
			c, done, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			resp, err := c.ExposeService(cmd.Context(), &openshellv1.ExposeServiceRequest{Sandbox: args[0], Service: args[1],
				TargetPort: port, Domain: domain, Workspace: *ws})
			if err != nil {
				return err
			}
			if a.output != "table" {
				return printStructured(cmd.OutOrStdout(), a.output, resp)
			}
			fmt.Fprintln(cmd.OutOrStdout(), resp.GetUrl())
			return nil
		},
	}
	cmd.Flags().Uint32Var(&port, "port", 0, "port the service listens on inside the sandbox (required)")
	cmd.Flags().BoolVar(&domain, "domain", false, "host-based URL under the gateway's services_domain")
	_ = cmd.MarkFlagRequired("port")
	return cmd
}

func (a *app) serviceGet(ws *string) *cobra.Command {
	return &cobra.Command{
		Use:               "get SANDBOX NAME",
		Short:             "Show one service",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: a.completeSandboxes(false),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(a.output); err != nil {
				return err
			}
			c, done, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			resp, err := c.GetService(cmd.Context(), &openshellv1.GetServiceRequest{Sandbox: args[0], Service: args[1], Workspace: *ws})
			if err != nil {
				return err
			}
			if a.output != "table" {
				return printStructured(cmd.OutOrStdout(), a.output, resp)
			}
			printServices(cmd.OutOrStdout(), []*openshellv1.ServiceEndpointResponse{resp})
			return nil
		},
	}
}

func (a *app) serviceList(ws *string) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:               "list [SANDBOX]",
		Short:             "List services (of one sandbox when named)",
		Args:              cobra.MaximumNArgs(1),
		ValidArgsFunction: a.completeSandboxes(false),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(a.output); err != nil {
				return err
			}
			c, done, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			req := &openshellv1.ListServicesRequest{Workspace: *ws, AllWorkspaces: all}
			if len(args) == 1 {
				req.Sandbox = args[0]
			}
			resp, err := c.ListServices(cmd.Context(), req)
			if err != nil {
				return err
			}
			if a.output != "table" {
				return printStructured(cmd.OutOrStdout(), a.output, resp)
			}
			printServices(cmd.OutOrStdout(), resp.GetServices())
			return nil
		},
	}
	cmd.Flags().BoolVarP(&all, "all-workspaces", "A", false, "list every workspace")
	return cmd
}

func (a *app) serviceDelete(ws *string) *cobra.Command {
	return &cobra.Command{
		Use:               "delete SANDBOX NAME",
		Short:             "Delete a service (its URL then answers 404)",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: a.completeSandboxes(false),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(a.output); err != nil {
				return err
			}
			c, done, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			resp, err := c.DeleteService(cmd.Context(), &openshellv1.DeleteServiceRequest{Sandbox: args[0], Service: args[1], Workspace: *ws})
			if err != nil {
				return err
			}
			if a.output != "table" {
				return printStructured(cmd.OutOrStdout(), a.output, resp)
			}
			if !resp.GetDeleted() {
				return fmt.Errorf("sandbox %s has no service %s (openshell service list %s)", args[0], args[1], args[0])
			}
			fmt.Fprintf(cmd.OutOrStdout(), "service %s of sandbox %s deleted\n", args[1], args[0])
			return nil
		},
	}
}

func printServices(w io.Writer, svcs []*openshellv1.ServiceEndpointResponse) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SANDBOX\tSERVICE\tPORT\tURL\tAGE")
	for _, s := range svcs {
		ep := s.GetEndpoint()
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", ep.GetSandboxName(), ep.GetServiceName(),
			strconv.FormatUint(uint64(ep.GetTargetPort()), 10), s.GetUrl(), age(ep.GetMetadata().GetCreatedAtMs()))
	}
	tw.Flush()
}
