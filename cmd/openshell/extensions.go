package main

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/openshell/openshell/internal/cli/policycmds"
	"github.com/openshell/openshell/internal/cli/providercmds"
	"github.com/openshell/openshell/internal/cli/snapshotcmds"
	"github.com/openshell/openshell/internal/cli/sshcmds"
)

// mountExtensions adds commands implemented in other packages: the exec/connect/
// ssh-config/upload/download/logs sandbox subcommands, `sandbox provider`
// (internal/cli/providercmds) and the ssh-proxy used as an
// ssh ProxyCommand (internal/cli/sshcmds), `policy` (internal/cli/policycmds); and
// `vm images` (internal/cli/vmimages), run by openshell-gateway (delegate.go).
func mountExtensions(root *cobra.Command, a *app) {
	for _, c := range root.Commands() {
		if c.Name() == "sandbox" {
			for _, sc := range sshcmds.Commands(a.dial) {
				// Every ssh command takes the sandbox name: first, or as -n/--name.
				if sc.Flags().Lookup("name") != nil {
					_ = sc.RegisterFlagCompletionFunc("name", a.completeSandboxes(false))
				} else if sc.ValidArgsFunction == nil {
					sc.ValidArgsFunction = a.completeSandboxes(false)
				}
				c.AddCommand(sc)
			}
			sp := providercmds.SandboxCommand(providercmds.DialFunc(a.dial))
			for _, sc := range sp.Commands() {
				sc.ValidArgsFunction = a.completeSandboxThenProvider
			}
			c.AddCommand(sp)
			snap := snapshotcmds.SandboxCommand(snapshotcmds.DialFunc(a.dial))
			snap.ValidArgsFunction = a.completeSandboxes(false)
			c.AddCommand(snap)
		}
	}
	root.AddCommand(sshcmds.SSHProxyCommand(a.dial))
	pol := policycmds.Command(policycmds.GRPCFrom(a.dial))
	for _, sc := range pol.Commands() {
		if sc.Name() != "validate" {
			sc.ValidArgsFunction = a.completeSandboxes(false)
		}
	}
	root.AddCommand(pol)
	prov := providercmds.Command(providercmds.DialFunc(a.dial))
	for _, sc := range prov.Commands() {
		if sc.Name() == "get" || sc.Name() == "update" || sc.Name() == "delete" {
			sc.ValidArgsFunction = func(cmd *cobra.Command, args []string, prefix string) ([]string, cobra.ShellCompDirective) {
				if len(args) > 0 {
					return nil, cobra.ShellCompDirectiveNoFileComp
				}
				return a.completeProviders(cmd, args, prefix)
			}
		}
	}
	root.AddCommand(prov)
	root.AddCommand(snapshotcmds.Command(snapshotcmds.DialFunc(a.dial)))
	vm := &cobra.Command{Use: "vm", Short: "VM driver tools"}
	vm.AddCommand(delegated([]string{"vm"}, "images", "List and prune the VM image cache (read-only ext4 disks made from OCI images)"))
	root.AddCommand(vm)
}

// completeSandboxThenProvider completes `sandbox provider attach|detach|list`: a
// sandbox name first, then (attach, detach) a provider name.
func (a *app) completeSandboxThenProvider(cmd *cobra.Command, args []string, prefix string) ([]string, cobra.ShellCompDirective) {
	switch {
	case len(args) == 0:
		return a.completeSandboxes(false)(cmd, args, prefix)
	case len(args) == 1 && cmd.Name() != "list":
		return a.completeProviders(cmd, args, prefix)
	}
	return nil, cobra.ShellCompDirectiveNoFileComp
}

// remoteExitCode returns the exit code of a remote command that failed (exec).
func remoteExitCode(err error) (int, bool) {
	var ec *sshcmds.ExitCodeError
	if errors.As(err, &ec) {
		return ec.Code, true
	}
	return 0, false
}
