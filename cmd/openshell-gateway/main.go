// Command openshell-gateway is the openshell control plane: the gRPC API (mTLS by
// default on 127.0.0.1:17670), the sandbox store, supervisor sessions, and the compute
// driver it manages.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/openshell/openshell/gateway/config"
	"github.com/openshell/openshell/gateway/daemon"
	"github.com/openshell/openshell/gateway/driversel"
	"github.com/openshell/openshell/gateway/pki"
	"github.com/openshell/openshell/internal/grpcopts"
	"github.com/openshell/openshell/internal/staticbin"
	"github.com/openshell/openshell/internal/version"
)

func main() {
	grpcopts.TuneGC()
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "openshell-gateway:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "openshell-gateway",
		Short:         "Run the openshell gateway (control plane)",
		Version:       version.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Resolve(cmd.Flags(), os.Getenv)
			if err != nil {
				return err
			}
			if err := cfg.Validate(); err != nil {
				return err
			}
			return run(cmd.Context(), cfg)
		},
	}
	config.BindFlags(root.PersistentFlags())

	root.AddCommand(&cobra.Command{
		Use:   "generate-certs",
		Short: "Create (or renew) the gateway CA, server and client certificates in the state directory",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Resolve(cmd.Flags(), os.Getenv)
			if err != nil {
				return err
			}
			if _, err := daemon.EnsureCerts(cfg); err != nil {
				return err
			}
			dir := daemon.PKIDir(cfg.StateDir)
			for _, f := range []string{pki.CACertFile, pki.ServerCertFile, pki.ClientCertFile, pki.ClientKeyFile} {
				fmt.Println(filepath.Join(dir, f))
			}
			return nil
		},
	})
	root.AddCommand(doctorCmd(), buildImageCmd(), cliCmd())
	return root
}

func newLogger(cfg *config.Config) *slog.Logger {
	var lvl slog.Level
	switch strings.ToLower(cfg.LogLevel) {
	case "debug":
		lvl = slog.LevelDebug
	case "warn", "warning":
		lvl = slog.LevelWarn
	case "error":
		lvl = slog.LevelError
	}
	opts := &slog.HandlerOptions{Level: lvl}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

func run(ctx context.Context, cfg *config.Config) error {
	log := newLogger(cfg)
	slog.SetDefault(log)
	if err := checkSupervisor(cfg); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	g, err := daemon.Start(ctx, cfg, log)
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- g.Wait() }()
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err := <-errc:
		if err != nil {
			log.Error("gRPC server stopped", "err", err)
		}
	}
	return g.Stop(10 * time.Second)
}

// checkSupervisor refuses a dynamically linked supervisor binary before anything
// starts: the drivers copy it into images that may lack glibc (busybox, distroless)
// and into VM initramfs images, where it would fail every sandbox with a bare "exec
// /opt/openshell/bin/openshell-sandbox: no such file or directory". An external driver
// brings its own; a binary that is not found is left to the driver, which says where
// it looked.
func checkSupervisor(cfg *config.Config) error {
	if cfg.ComputeDriverSocket != "" || cfg.Driver == "kubernetes" {
		return nil
	}
	path := ""
	if cfg.Driver != "" {
		path, _ = cfg.DriverTable(cfg.Driver)["supervisor_binary"].(string)
	}
	if path == "" {
		p, err := driversel.FindBinary("openshell-sandbox", "")
		if err != nil {
			return nil
		}
		path = p
	}
	if err := staticbin.Check(path); err != nil {
		return fmt.Errorf("supervisor binary: %w; sandboxes would fail to start with it. Rebuild it static: %s (or point supervisor_binary in the driver's config section at a static build)",
			err, strings.Replace(staticbin.BuildHint, "<dir>", filepath.Dir(path), 1))
	}
	return nil
}
