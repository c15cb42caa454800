// Package policycmds is the CLI side of `openshell policy set|get`. The policy file
// is parsed and validated locally (errors name the field and line) before anything
// is sent.
//
// Gateway RPCs: `get` works with the existing subset (GetSandbox to resolve the name,
// then GetSandboxConfig for the effective policy, version and hash; it falls back to
// the sandbox's spec.policy when GetSandboxConfig is refused). `set` needs an RPC
// the gateway does not offer yet; until it does, GRPC's SetPolicy returns
// ErrSetUnsupported. The proposed shape, in openshell.v1.OpenShell:
//
//	rpc UpdateSandboxPolicy(UpdateSandboxPolicyRequest) returns (UpdateSandboxPolicyResponse)
//	message UpdateSandboxPolicyRequest  { string name = 1; string workspace = 2; openshell.sandbox.v1.SandboxPolicy policy = 3; }
//	message UpdateSandboxPolicyResponse { uint32 version = 1; string policy_hash = 2; }
//
// The gateway stores the policy, bumps the version that GetSandboxConfig returns, and
// the supervisor (polling GetSandboxConfig) applies network_policies live; the static
// sections (filesystem_policy, landlock, process) only take effect on re-creation, so
// the gateway should refuse a change to them with FAILED_PRECONDITION. `--wait`
// polls GetSandboxConfig until the version reaches the one returned.
package policycmds

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/api/sandboxv1"
	"github.com/openshell/openshell/supervisor/policy"
)

// Status is a sandbox's effective policy.
type Status struct {
	Policy  *sandboxv1.SandboxPolicy
	Version uint32 // 0 when only the creation spec was available
	Hash    string
}

// Gateway is what the commands need from the gateway.
type Gateway interface {
	GetPolicy(ctx context.Context, sandbox string) (*Status, error)
	SetPolicy(ctx context.Context, sandbox string, p *sandboxv1.SandboxPolicy) (version uint32, err error)
}

// ErrSetUnsupported: the gateway has no RPC to replace a running sandbox's policy.
var ErrSetUnsupported = errors.New("this gateway cannot update a sandbox's policy yet (it needs the UpdateSandboxPolicy RPC); recreate the sandbox with the policy instead")

// DialFunc connects to the configured gateway.
type DialFunc func(ctx context.Context) (*grpc.ClientConn, error)

// GRPC is the Gateway over the OpenShell API.
type GRPC struct{ API pb.OpenShellClient }

var _ Gateway = GRPC{}

// GetPolicy implements Gateway.
func (g GRPC) GetPolicy(ctx context.Context, name string) (*Status, error) {
	resp, err := g.API.GetSandbox(ctx, &pb.GetSandboxRequest{Name: name})
	if err != nil {
		if status.Code(err) == codes.NotFound {
			return nil, fmt.Errorf("sandbox %q not found (see `openshell sandbox list`)", name)
		}
		return nil, fmt.Errorf("look up sandbox %q: %w", name, err)
	}
	sb := resp.GetSandbox()
	cfg, err := g.API.GetSandboxConfig(ctx, &sandboxv1.GetSandboxConfigRequest{SandboxId: sb.GetMetadata().GetId()})
	if err == nil {
		return &Status{Policy: cfg.GetPolicy(), Version: cfg.GetVersion(), Hash: cfg.GetPolicyHash()}, nil
	}
	switch status.Code(err) {
	case codes.Unimplemented, codes.PermissionDenied:
		return &Status{Policy: sb.GetSpec().GetPolicy()}, nil
	}
	return nil, fmt.Errorf("get the policy of sandbox %q: %w", name, err)
}

// SetPolicy implements Gateway; see the package doc for the RPC it needs.
func (GRPC) SetPolicy(context.Context, string, *sandboxv1.SandboxPolicy) (uint32, error) {
	return 0, ErrSetUnsupported
}

// GRPCFrom adapts a DialFunc (as cmd/openshell has) to the commands' constructor.
func GRPCFrom(dial DialFunc) func(ctx context.Context) (Gateway, error) {
	return func(ctx context.Context) (Gateway, error) {
		cc, err := dial(ctx)
		if err != nil {
			return nil, err
		}
		return GRPC{API: pb.NewOpenShellClient(cc)}, nil
	}
}

// Command returns `policy` with `set` and `get`.
func Command(gateway func(ctx context.Context) (Gateway, error)) *cobra.Command {
	root := &cobra.Command{Use: "policy", Short: "Show or change a sandbox's policy"}
	root.AddCommand(setCmd(gateway), getCmd(gateway), validateCmd())
	return root
}

func loadFile(path string) (*policy.Policy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read policy file: %w", err)
	}
	p, err := policy.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

func validateCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "validate FILE",
		Short: "Check a policy file without sending it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := loadFile(args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: valid\n", args[0])
			return nil
		},
	}
}

func setCmd(gateway func(ctx context.Context) (Gateway, error)) *cobra.Command {
	var file string
	var wait bool
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "set NAME --policy FILE",
		Short: "Replace a sandbox's policy (network_policies apply live)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if file == "" {
				return errors.New("--policy FILE is required")
			}
			p, err := loadFile(file)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			gw, err := gateway(ctx)
			if err != nil {
				return err
			}
			v, err := gw.SetPolicy(ctx, args[0], p.ToProto())
			if err != nil {
				return fmt.Errorf("set the policy of sandbox %q: %w", args[0], err)
			}
			if !wait {
				fmt.Fprintf(cmd.OutOrStdout(), "policy version %d stored for sandbox %s\n", v, args[0])
				return nil
			}
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			for {
				st, err := gw.GetPolicy(ctx, args[0])
				if err == nil && st.Version >= v {
					fmt.Fprintf(cmd.OutOrStdout(), "policy version %d in effect for sandbox %s\n", st.Version, args[0])
					return nil
				}
				select {
				case <-ctx.Done():
					return fmt.Errorf("sandbox %q did not reach policy version %d within %s: check `openshell sandbox logs %s`", args[0], v, timeout, args[0])
				case <-time.After(500 * time.Millisecond):
				}
			}
		},
	}
	c.Flags().StringVar(&file, "policy", "", "policy YAML file")
	c.Flags().BoolVar(&wait, "wait", false, "wait until the new version is in effect")
	c.Flags().DurationVar(&timeout, "timeout", time.Minute, "how long --wait waits")
	return c
}

func getCmd(gateway func(ctx context.Context) (Gateway, error)) *cobra.Command {
	var output string
	c := &cobra.Command{
		Use:   "get NAME",
		Short: "Print a sandbox's effective policy",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "yaml" && output != "json" {
				return fmt.Errorf("--output %q: use yaml or json", output)
			}
			ctx := cmd.Context()
			gw, err := gateway(ctx)
			if err != nil {
				return err
			}
			st, err := gw.GetPolicy(ctx, args[0])
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if output == "json" {
				b, err := protojson.MarshalOptions{Multiline: true}.Marshal(st.Policy)
				if err != nil {
					return err
				}
				fmt.Fprintln(out, string(b))
				return nil
			}
			if st.Policy == nil {
				fmt.Fprintf(out, "# sandbox %s has no policy of its own: the default applies\n", args[0])
				st.Policy = policy.Default().ToProto()
			}
			p, err := policy.FromProto(st.Policy)
			if err != nil {
				return fmt.Errorf("the gateway returned a policy this CLI cannot show as YAML (%w); use --output json", err)
			}
			y, err := p.Marshal()
			if err != nil {
				return err
			}
			if st.Version > 0 {
				fmt.Fprintf(out, "# sandbox %s, policy version %d, sha256 %s\n", args[0], st.Version, st.Hash)
			}
			out.Write(y)
			return nil
		},
	}
	c.Flags().StringVarP(&output, "output", "o", "yaml", "yaml or json")
	return c
}
