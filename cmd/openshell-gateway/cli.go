package main

import (
	"github.com/spf13/cobra"

	"github.com/openshell/openshell/internal/cli/vmimages"
)

// cliCmd is hidden: it runs the openshell CLI commands whose code links what the CLI
// leaves out (`vm images` reads the VM image cache, whose package links the image
// fetchers). The arguments are an openshell command line; help and completion
// (`cli __complete vm images ...`) come out as the CLI's own.
func cliCmd() *cobra.Command {
	return &cobra.Command{
		Use:                "cli ARGS...",
		Short:              "Run an openshell command that this binary carries for the CLI",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			root := delegatedRoot()
			root.SetArgs(args)
			root.SetOut(cmd.OutOrStdout())
			root.SetErr(cmd.ErrOrStderr())
			return root.ExecuteContext(cmd.Context())
		},
	}
}

// delegatedRoot is an "openshell" command tree holding only the delegated commands.
func delegatedRoot() *cobra.Command {
	root := &cobra.Command{Use: "openshell", SilenceUsage: true, SilenceErrors: true}
	// The CLI's global flags may come before the command; these commands do not use
	// them.
	root.PersistentFlags().StringP("gateway", "g", "default", "name of the gateway to talk to (not used by this command)")
	vm := &cobra.Command{Use: "vm", Short: "VM driver tools"}
	vm.AddCommand(vmimages.Command())
	root.AddCommand(vm)
	return root
}
