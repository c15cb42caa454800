// Command openshell is the openshell CLI: start and inspect a gateway, and create,
// inspect and delete sandboxes through it.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/gateway/clientconf"
	"github.com/openshell/openshell/internal/grpcopts"
	"github.com/openshell/openshell/internal/version"
)

// app holds the global flags; commands read them at run time.
type app struct {
	gateway string
	output  string
}

// dial is the connection factory shared by every command (and by the ssh commands,
// whose DialFunc has the same signature).
func (a *app) dial(ctx context.Context) (*grpc.ClientConn, error) {
	return clientconf.Dialer(func() string { return a.gateway })(ctx)
}

func (a *app) client(ctx context.Context) (openshellv1.OpenShellClient, func(), error) {
	cc, err := a.dial(ctx)
	if err != nil {
		return nil, nil, err
	}
	return openshellv1.NewOpenShellClient(cc), func() { cc.Close() }, nil
}

func newRoot() (*cobra.Command, *app) {
	a := &app{}
	root := &cobra.Command{
		Use:           "openshell",
		Short:         "Create and manage sandboxes for AI agents",
		Version:       version.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVarP(&a.gateway, "gateway", "g", defaultGateway(os.Getenv), "name of the gateway to talk to (~/.config/openshell/gateways/<name>; default $"+gatewayEnv+", else \"default\")")
	_ = root.RegisterFlagCompletionFunc("gateway", completeGatewayNames)
	root.PersistentFlags().StringVarP(&a.output, "output", "o", "table", "output format where it applies: table, json or yaml")
	root.AddCommand(a.gatewayCmd(), a.sandboxCmd(), a.forwardCmd(), a.doctorCmd(), a.gpuCmd(), a.serviceCmd(), a.poolCmd())
	mountExtensions(root, a)
	return root, a
}

// gatewayEnv names the gateway when -g/--gateway is not given.
const gatewayEnv = "OPENSHELL_GATEWAY"

func defaultGateway(getenv func(string) string) string {
	if g := strings.TrimSpace(getenv(gatewayEnv)); g != "" {
		return g
	}
	return clientconf.DefaultName
}

func main() {
	grpcopts.TuneGC()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	root, a := newRoot()
	err := root.ExecuteContext(ctx)
	stop()
	if err != nil {
		// A remote command's own non-zero exit is not a CLI error: just pass it on.
		if code, ok := remoteExitCode(err); ok {
			os.Exit(code)
		}
		fmt.Fprintln(os.Stderr, "error:", humanize(err, a.gateway))
		os.Exit(exitCode(err))
	}
}
