package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/openshell/openshell/drivers/docker"
	"github.com/openshell/openshell/drivers/podman"
)

// buildImageCmd is hidden: `openshell sandbox create --from <dir>` runs it so the
// CLI does not link the engine clients. Build output goes to stdout as it comes; an
// error is the last line on stderr and the exit status is 1.
func buildImageCmd() *cobra.Command {
	var engine, tag string
	cmd := &cobra.Command{
		Use:    "build-image --engine docker|podman --tag TAG PATH",
		Short:  "Build a directory or Dockerfile into a local image (used by `openshell sandbox create --from`)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if tag == "" {
				return fmt.Errorf("--tag is required")
			}
			out := cmd.OutOrStdout()
			switch engine {
			case "docker":
				_, err := docker.BuildImage(cmd.Context(), args[0], tag, out)
				return err
			case "podman":
				// The Podman service the podman driver uses (CONTAINER_HOST, else the
				// user's or the rootful socket).
				_, err := podman.BuildImage(cmd.Context(), "", args[0], tag, out)
				return err
			}
			return fmt.Errorf("--engine %q: want docker or podman", engine)
		},
	}
	cmd.Flags().StringVar(&engine, "engine", "docker", "the engine that builds: docker or podman")
	cmd.Flags().StringVar(&tag, "tag", "", "image tag to build")
	return cmd
}
