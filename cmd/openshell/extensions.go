package main

import "github.com/spf13/cobra"

// mountExtensions adds commands implemented in other packages (ssh/exec commands,
// VM image management). It is a separate file so wiring them is a one-file change.
func mountExtensions(root *cobra.Command, a *app) {}
