package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/gateway/clientconf"
)

// Shell completion (cobra's `openshell completion bash|zsh|fish|powershell`) completes
// gateway names from the client directories and sandbox and provider names from the
// gateway itself. A gateway that does not answer within completionTimeout completes
// nothing rather than hanging the user's shell.
const completionTimeout = 2 * time.Second

// completeGatewayNames lists the registered gateways (~/.config/openshell/gateways/*).
func completeGatewayNames(_ *cobra.Command, _ []string, prefix string) ([]string, cobra.ShellCompDirective) {
	home, err := clientconf.ConfigHome()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ents, _ := os.ReadDir(filepath.Join(home, "gateways"))
	var names []string
	for _, e := range ents {
		if e.IsDir() && strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}

// completeSandboxes completes sandbox names in the command's workspace; with many
// names allowed (delete NAME...), names already given are left out.
func (a *app) completeSandboxes(many bool) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, prefix string) ([]string, cobra.ShellCompDirective) {
		if len(args) > 0 && !many {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		workspace := ""
		if f := cmd.Flag("workspace"); f != nil {
			workspace = f.Value.String()
		}
		return a.remoteNames(cmd, prefix, args, func(ctx context.Context, c openshellv1.OpenShellClient) ([]string, error) {
			resp, err := c.ListSandboxes(ctx, &openshellv1.ListSandboxesRequest{Workspace: workspace, Limit: MaxCompletions})
			var out []string
			for _, sb := range resp.GetSandboxes() {
				out = append(out, sb.GetMetadata().GetName())
			}
			return out, err
		})
	}
}

// completeProviders completes provider names.
func (a *app) completeProviders(cmd *cobra.Command, _ []string, prefix string) ([]string, cobra.ShellCompDirective) {
	return a.remoteNames(cmd, prefix, nil, func(ctx context.Context, c openshellv1.OpenShellClient) ([]string, error) {
		resp, err := c.ListProviders(ctx, &openshellv1.ListProvidersRequest{Limit: MaxCompletions})
		var out []string
		for _, p := range resp.GetProviders() {
			out = append(out, p.GetMetadata().GetName())
		}
		return out, err
	})
}

// MaxCompletions bounds how many names one completion asks the gateway for.
const MaxCompletions = 1000

func (a *app) remoteNames(cmd *cobra.Command, prefix string, skip []string, list func(context.Context, openshellv1.OpenShellClient) ([]string, error)) ([]string, cobra.ShellCompDirective) {
	parent := cmd.Context()
	if parent == nil {
		parent = context.Background()
	}
	ctx, cancel := context.WithTimeout(parent, completionTimeout)
	defer cancel()
	c, done, err := a.client(ctx)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	defer done()
	names, err := list(ctx, c)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	for _, n := range names {
		if strings.HasPrefix(n, prefix) && !slices.Contains(skip, n) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out, cobra.ShellCompDirectiveNoFileComp
}
