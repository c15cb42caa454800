package vm

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/openshell/openshell/drivers/vm/internal/runner"
	"github.com/openshell/openshell/images"
	"github.com/openshell/openshell/vmm/channel"
	"github.com/openshell/openshell/vmm/libkrun"
)

// RunnerMain is the `openshell-driver-vm runner --state-dir DIR` entry point: it boots
// the sandbox VM described in DIR and serves it until the VM is gone. args exclude the
// "runner" word.
func RunnerMain(ctx context.Context, args []string, stderr io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("runner", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("state-dir", "", "sandbox state directory (written by the driver)")
	enter := fs.String(runner.LibkrunEnterFlag, "", "internal: become the libkrun VM described by this enter spec (the runner starts it)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *enter != "" {
		// Returns only when libkrun refused the VM; otherwise the guest owns the process.
		return libkrun.Enter(*enter)
	}
	if *dir == "" {
		return fmt.Errorf("runner: --state-dir is required")
	}
	return runner.Run(ctx, *dir, runner.Options{
		NewMachine: runner.NewVMMMachine,
		Ports:      runner.Ports{Gateway: channel.PortGateway, Bootstrap: channel.PortBootstrap, Egress: channel.PortEgress, Bulk: channel.PortBulk},
		Log:        log,
		Hold: func(spec *runner.Spec) (func(), error) {
			if spec.ImageCacheDir == "" || spec.ImageKey == "" {
				return func() {}, nil
			}
			c, err := images.NewCache(spec.ImageCacheDir)
			if err != nil {
				return nil, err
			}
			return c.Acquire(spec.ImageKey)
		},
	})
}
