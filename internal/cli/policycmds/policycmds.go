// Package policycmds is the CLI side of `openshell policy set|get|list|validate`. The
// policy file is parsed and validated locally (errors name the field and line) before
// anything is sent.
//
// Gateway RPCs: `get` resolves the name with GetSandbox, then reads the effective
// policy, version and hash with GetSandboxConfig (falling back to the sandbox's
// spec.policy when GetSandboxConfig is refused); `get --rev N` and `get --full` read
// one revision with GetSandboxPolicyStatus, `list` the history with
// ListSandboxPolicies. `set` calls UpdateConfig: the gateway validates and stores the
// policy and bumps the sandbox's policy version; network_policies apply live, while a
// change to the static sections (filesystem_policy, landlock, process) is refused with
// FAILED_PRECONDITION. `--wait` polls GetSandbox until status.current_policy_version
// (set when the supervisor reports the version applied) reaches the stored version.
package policycmds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
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
	// AppliedVersion is the policy version the sandbox's supervisor last confirmed.
	AppliedVersion(ctx context.Context, sandbox string) (uint32, error)
	// Revision returns one policy revision (version 0 = the newest) and the version
	// the supervisor runs.
	Revision(ctx context.Context, sandbox string, version uint32) (*pb.SandboxPolicyRevision, uint32, error)
	// Revisions returns the policy history, newest first.
	Revisions(ctx context.Context, sandbox string) ([]*pb.SandboxPolicyRevision, error)
}

// ErrSetUnsupported: the gateway has no RPC to replace a running sandbox's policy.
var ErrSetUnsupported = errors.New("this gateway cannot update a sandbox's policy (it does not implement UpdateConfig; upgrade it); recreate the sandbox with the policy instead")

// ErrHistoryUnsupported: the gateway keeps no policy history.
var ErrHistoryUnsupported = errors.New("this gateway keeps no policy history (it does not implement ListSandboxPolicies/GetSandboxPolicyStatus; upgrade it)")

// DialFunc connects to the configured gateway.
type DialFunc func(ctx context.Context) (*grpc.ClientConn, error)

// GRPC is the Gateway over the OpenShell API.
type GRPC struct {
	API pb.OpenShellClient
}

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

// SetPolicy implements Gateway with UpdateConfig.
func (g GRPC) SetPolicy(ctx context.Context, name string, p *sandboxv1.SandboxPolicy) (uint32, error) {
	resp, err := g.API.UpdateConfig(ctx, &pb.UpdateConfigRequest{Name: name, Policy: p})
	if err != nil {
		return 0, policyRPCError(name, err, ErrSetUnsupported)
	}
	return resp.GetVersion(), nil
}

// Revision implements Gateway with GetSandboxPolicyStatus.
func (g GRPC) Revision(ctx context.Context, name string, version uint32) (*pb.SandboxPolicyRevision, uint32, error) {
	resp, err := g.API.GetSandboxPolicyStatus(ctx, &pb.GetSandboxPolicyStatusRequest{Name: name, Version: version})
	if err != nil {
		return nil, 0, policyRPCError(name, err, ErrHistoryUnsupported)
	}
	return resp.GetRevision(), resp.GetActiveVersion(), nil
}

// Revisions implements Gateway with ListSandboxPolicies.
func (g GRPC) Revisions(ctx context.Context, name string) ([]*pb.SandboxPolicyRevision, error) {
	resp, err := g.API.ListSandboxPolicies(ctx, &pb.ListSandboxPoliciesRequest{Name: name})
	if err != nil {
		return nil, policyRPCError(name, err, ErrHistoryUnsupported)
	}
	return resp.GetRevisions(), nil
}

// policyRPCError keeps the gateway's message (it names the fix); a sandbox-level
// NOT_FOUND points at the sandbox list.
func policyRPCError(name string, err, unimplemented error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch {
	case st.Code() == codes.Unimplemented:
		return unimplemented
	case st.Code() == codes.NotFound && !strings.Contains(st.Message(), "policy version"):
		return fmt.Errorf("sandbox %q not found (see `openshell sandbox list`)", name)
	}
	return errors.New(st.Message())
}

// AppliedVersion implements Gateway with GetSandbox (status.current_policy_version).
func (g GRPC) AppliedVersion(ctx context.Context, name string) (uint32, error) {
	resp, err := g.API.GetSandbox(ctx, &pb.GetSandboxRequest{Name: name})
	if err != nil {
		return 0, fmt.Errorf("look up sandbox %q: %w", name, err)
	}
	return resp.GetSandbox().GetStatus().GetCurrentPolicyVersion(), nil
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

// Command returns `policy` with `set`, `get`, `list` and `validate`.
func Command(gateway func(ctx context.Context) (Gateway, error)) *cobra.Command {
	root := &cobra.Command{Use: "policy", Short: "Show or change a sandbox's policy"}
	root.AddCommand(setCmd(gateway), getCmd(gateway), listCmd(gateway), validateCmd())
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
			var applied uint32
			var lastErr error
			for {
				a, err := gw.AppliedVersion(ctx, args[0])
				if err == nil && a >= v {
					fmt.Fprintf(cmd.OutOrStdout(), "policy version %d in effect for sandbox %s\n", a, args[0])
					return nil
				}
				if err == nil {
					applied = a
				} else {
					lastErr = err
				}
				// A supervisor that refused the version says so: stop waiting.
				if r, _, rerr := gw.Revision(ctx, args[0], v); rerr == nil && r.GetStatus() == pb.PolicyStatus_POLICY_STATUS_FAILED {
					return fmt.Errorf("policy version %d is stored, but the supervisor of sandbox %q did not apply it: %s; it keeps running version %d (see `openshell policy list %s`)",
						v, args[0], r.GetLoadError(), applied, args[0])
				}
				select {
				case <-ctx.Done():
					msg := fmt.Sprintf("policy version %d is stored, but the supervisor of sandbox %q has not confirmed it within %s (last confirmed: %d); is the sandbox running? see `openshell sandbox logs %s`",
						v, args[0], timeout, applied, args[0])
					if lastErr != nil {
						msg += fmt.Sprintf(" (last error: %v)", lastErr)
					}
					return errors.New(msg)
				case <-time.After(500 * time.Millisecond):
				}
			}
		},
	}
	c.Flags().StringVar(&file, "policy", "", "policy YAML file")
	c.Flags().BoolVar(&wait, "wait", false, "wait until the sandbox's supervisor confirms the new version")
	c.Flags().DurationVar(&timeout, "timeout", time.Minute, "how long --wait waits")
	return c
}

func getCmd(gateway func(ctx context.Context) (Gateway, error)) *cobra.Command {
	var output string
	var rev uint32
	var full bool
	c := &cobra.Command{
		Use:   "get NAME [--rev N] [--full]",
		Short: "Print a sandbox's effective policy, or one revision of it",
		Long: `Print a sandbox's effective policy as YAML (or JSON with -o json).
--rev N prints revision N instead (see 'openshell policy list NAME'); --full adds the
revision's version, status, hash, load error and times (with -o json: the whole
revision object).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "yaml" && output != "json" {
				return fmt.Errorf("--output %q: use yaml or json", output)
			}
			ctx := cmd.Context()
			gw, err := gateway(ctx)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			var st *Status
			if rev > 0 || full {
				r, active, err := gw.Revision(ctx, args[0], rev)
				if err != nil {
					return fmt.Errorf("policy of sandbox %q: %w", args[0], err)
				}
				if full && output == "json" {
					b, err := protojson.MarshalOptions{Multiline: true, UseProtoNames: true}.Marshal(r)
					if err != nil {
						return err
					}
					fmt.Fprintln(out, string(b))
					return nil
				}
				st = &Status{Policy: r.GetPolicy(), Version: r.GetVersion(), Hash: r.GetPolicyHash()}
				if full {
					writeRevisionHeader(out, args[0], r, active)
					st.Version = 0 // the header said it
				}
			} else if st, err = gw.GetPolicy(ctx, args[0]); err != nil {
				return err
			}
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
	c.Flags().Uint32Var(&rev, "rev", 0, "print this policy revision (version) instead of the effective policy")
	c.Flags().BoolVar(&full, "full", false, "also print the revision's status, hash, load error and times")
	return c
}

func writeRevisionHeader(w io.Writer, sandbox string, r *pb.SandboxPolicyRevision, active uint32) {
	fmt.Fprintf(w, "# sandbox: %s\n# version: %d (the supervisor runs version %d)\n# status: %s\n# sha256: %s\n# created: %s\n",
		sandbox, r.GetVersion(), active, statusName(r.GetStatus()), r.GetPolicyHash(), when(r.GetCreatedAtMs()))
	if r.GetLoadedAtMs() != 0 {
		fmt.Fprintf(w, "# loaded: %s\n", when(r.GetLoadedAtMs()))
	}
	if r.GetLoadError() != "" {
		fmt.Fprintf(w, "# load error: %s\n", r.GetLoadError())
	}
}

func statusName(s pb.PolicyStatus) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "POLICY_STATUS_"))
}

func when(ms int64) string {
	if ms == 0 {
		return "-"
	}
	return time.UnixMilli(ms).UTC().Format(time.RFC3339)
}

func listCmd(gateway func(ctx context.Context) (Gateway, error)) *cobra.Command {
	var output string
	c := &cobra.Command{
		Use:   "list NAME",
		Short: "List a sandbox's policy revisions, newest first",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("--output %q: use table or json", output)
			}
			ctx := cmd.Context()
			gw, err := gateway(ctx)
			if err != nil {
				return err
			}
			revs, err := gw.Revisions(ctx, args[0])
			if err != nil {
				return fmt.Errorf("policy history of sandbox %q: %w", args[0], err)
			}
			out := cmd.OutOrStdout()
			if output == "json" {
				b, err := protojson.MarshalOptions{Multiline: true, UseProtoNames: true}.Marshal(&pb.ListSandboxPoliciesResponse{Revisions: revs})
				if err != nil {
					return err
				}
				fmt.Fprintln(out, string(b))
				return nil
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "VERSION\tSTATUS\tSHA256\tCREATED\tLOADED\tERROR")
			for _, r := range revs {
				h := r.GetPolicyHash()
				if len(h) > 12 {
					h = h[:12]
				}
				e := r.GetLoadError()
				if e == "" {
					e = "-"
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", r.GetVersion(), statusName(r.GetStatus()), h, when(r.GetCreatedAtMs()), when(r.GetLoadedAtMs()), e)
			}
			return tw.Flush()
		},
	}
	c.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return c
}
