package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"

	"github.com/spf13/cobra"
)

// Commands whose code links what this binary leaves out (the VM image cache's
// package links the image fetchers and the Docker client) run in openshell-gateway,
// found next to this binary: `openshell-gateway cli <openshell command line>` runs
// the same command tree, so flags, help, output and completion are the same.

// delegated is a stand-in for the command named by use (e.g. "images") under path
// (e.g. ["vm"]); short is its one-line help for the parent's command list.
func delegated(path []string, use, short string) *cobra.Command {
	full := slices.Concat(path, []string{use})
	cmd := &cobra.Command{
		Use:                use,
		Short:              short,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runGatewayCLI(cmd.Context(), slices.Concat(full, args), cmd.InOrStdin(), cmd.OutOrStdout(), os.Stderr)
		},
		ValidArgsFunction: func(cmd *cobra.Command, args []string, prefix string) ([]string, cobra.ShellCompDirective) {
			var out bytes.Buffer
			argv := slices.Concat([]string{cobra.ShellCompRequestCmd}, full, args, []string{prefix})
			if err := runGatewayCLI(cmd.Context(), argv, nil, &out, io.Discard); err != nil {
				return nil, cobra.ShellCompDirectiveError
			}
			return parseCompletion(out.String())
		},
	}
	// `openshell help vm images` shows the delegated command's own help.
	cmd.SetHelpFunc(func(c *cobra.Command, _ []string) {
		if err := runGatewayCLI(c.Context(), slices.Concat(full, []string{"--help"}), nil, c.OutOrStdout(), os.Stderr); err != nil {
			fmt.Fprintln(c.ErrOrStderr(), "error:", err)
		}
	})
	return cmd
}

// runGatewayCLI runs `openshell-gateway cli ARGS`. stdout streams; stderr is passed
// on when the command succeeds and becomes the error when it fails (without the
// gateway binary's name, so it reads as this CLI's own).
func runGatewayCLI(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	bin, err := findGateway()
	if err != nil {
		return fmt.Errorf("`openshell %s` runs in openshell-gateway: %w", strings.Join(args[:min(2, len(args))], " "), err)
	}
	var errBuf bytes.Buffer
	c := exec.CommandContext(ctx, bin, append([]string{"cli"}, args...)...)
	c.Stdin, c.Stdout, c.Stderr = stdin, stdout, &errBuf
	runErr := c.Run()
	msg := strings.TrimSpace(strings.TrimPrefix(errBuf.String(), "openshell-gateway: "))
	if runErr == nil {
		if msg != "" {
			fmt.Fprintln(stderr, msg)
		}
		return nil
	}
	if msg == "" {
		return fmt.Errorf("%s cli %s: %w", bin, strings.Join(args, " "), runErr)
	}
	return errors.New(msg)
}

// parseCompletion reads cobra's completion protocol: one candidate a line, then
// ":<directive>".
func parseCompletion(out string) ([]string, cobra.ShellCompDirective) {
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) == 0 {
		return nil, cobra.ShellCompDirectiveError
	}
	last := lines[len(lines)-1]
	var d int
	if _, err := fmt.Sscanf(last, ":%d", &d); err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	return lines[:len(lines)-1], cobra.ShellCompDirective(d)
}
