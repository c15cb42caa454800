// Package vmimages implements `openshell vm images`: list and prune the cache
// of read-only ext4 disks that VM sandboxes boot from.
package vmimages

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/openshell/openshell/images"
)

// Command returns the "images" command with its list and prune subcommands.
// It owns the --cache-dir flag (default: images.DefaultCacheDir()).
func Command() *cobra.Command {
	var cacheDir string
	cmd := &cobra.Command{
		Use:   "images",
		Short: "List and prune the VM image cache (read-only ext4 disks made from OCI images)",
		Args:  cobra.NoArgs,
	}
	cmd.PersistentFlags().StringVar(&cacheDir, "cache-dir", "", "image cache directory (default $XDG_CACHE_HOME/openshell/images or ~/.cache/openshell/images)")
	open := func() (*images.Cache, error) { return images.NewCache(cacheDir) }
	cmd.AddCommand(listCmd(open), pruneCmd(open))
	return cmd
}

type opener func() (*images.Cache, error)

// row is one entry as list prints it in JSON.
type row struct {
	Key       string             `json:"key"`
	Ref       string             `json:"ref"`
	Digest    string             `json:"digest"`
	DiskPath  string             `json:"disk_path"`
	SizeBytes int64              `json:"size_bytes"`
	CreatedAt time.Time          `json:"created_at"`
	InUse     bool               `json:"in_use"`
	Config    images.ImageConfig `json:"config"`
}

func listCmd(open opener) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List cached VM images",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("--output %q: want table or json", output)
			}
			c, err := open()
			if err != nil {
				return err
			}
			entries, err := c.List()
			if err != nil {
				return err
			}
			rows := make([]row, 0, len(entries))
			for _, e := range entries {
				inUse, _ := c.InUse(e.Key)
				rows = append(rows, row{Key: e.Key, Ref: e.Ref, Digest: e.Digest, DiskPath: e.DiskPath,
					SizeBytes: e.SizeBytes, CreatedAt: e.CreatedAt, InUse: inUse, Config: e.Config})
			}
			out := cmd.OutOrStdout()
			if output == "json" {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(rows)
			}
			return printTable(out, rows)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}

func printTable(out io.Writer, rows []row) error {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "REF\tDIGEST\tSIZE\tCREATED\tIN USE")
	for _, r := range rows {
		inUse := ""
		if r.InUse {
			inUse = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Ref, shortDigest(r.Digest), humanize.IBytes(uint64(r.SizeBytes)), humanize.Time(r.CreatedAt), inUse)
	}
	return tw.Flush()
}

func shortDigest(d string) string {
	algo, hex, ok := strings.Cut(d, ":")
	if !ok || len(hex) < 12 {
		return d
	}
	return algo + ":" + hex[:12]
}

func pruneCmd(open opener) *cobra.Command {
	var all, dryRun bool
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Remove cached VM images no VM uses",
		Long: `Remove cached VM images.

Without --all, only stale entries go: those superseded by a newer image for
the same reference, and those built by another converter version. With
--all, every entry goes. Entries in use by a running VM are always kept.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := open()
			if err != nil {
				return err
			}
			entries, err := c.List()
			if err != nil {
				return err
			}
			keep := keepFunc(entries, all)
			out := cmd.OutOrStdout()
			if dryRun {
				var total uint64
				n := 0
				for _, e := range entries {
					if keep(e) {
						continue
					}
					if inUse, _ := c.InUse(e.Key); inUse {
						fmt.Fprintf(out, "would keep (in use) %s %s\n", e.Ref, shortDigest(e.Digest))
						continue
					}
					fmt.Fprintf(out, "would remove %s %s %s\n", e.Ref, shortDigest(e.Digest), humanize.IBytes(uint64(e.SizeBytes)))
					total += uint64(e.SizeBytes)
					n++
				}
				fmt.Fprintf(out, "dry run: %d image(s), %s would be freed\n", n, humanize.IBytes(total))
				return nil
			}
			removed, err := c.Prune(cmd.Context(), keep)
			var total uint64
			for _, e := range removed {
				fmt.Fprintf(out, "removed %s %s %s\n", e.Ref, shortDigest(e.Digest), humanize.IBytes(uint64(e.SizeBytes)))
				total += uint64(e.SizeBytes)
			}
			fmt.Fprintf(out, "%d image(s) removed, %s freed\n", len(removed), humanize.IBytes(total))
			if err != nil {
				return errors.Join(errors.New("some cache entries could not be removed"), err)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "remove every cached image not in use, not only stale ones")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would be removed without removing it")
	return cmd
}

// keepFunc decides what prune keeps. entries are newest first (Cache.List).
func keepFunc(entries []*images.Entry, all bool) func(*images.Entry) bool {
	if all {
		return func(*images.Entry) bool { return false }
	}
	newest := map[string]string{} // ref → key of its newest entry
	for _, e := range entries {
		if e.ConverterVersion != images.ConverterVersion {
			continue
		}
		if _, ok := newest[e.Ref]; !ok {
			newest[e.Ref] = e.Key
		}
	}
	return func(e *images.Entry) bool {
		return e.ConverterVersion == images.ConverterVersion && newest[e.Ref] == e.Key
	}
}
