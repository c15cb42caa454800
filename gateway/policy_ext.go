package gateway

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/api/sandboxv1"
	"github.com/openshell/openshell/gateway/auth"
	"github.com/openshell/openshell/supervisor/policy"
)

// extServer implements openshellv1.OpenShellExtServer on top of the Server's store
// and helpers. It is a separate type so the two services' generated
// Unimplemented* embeds do not collide.
type extServer struct {
	openshellv1.UnimplementedOpenShellExtServer
	s *Server
}

var _ openshellv1.OpenShellExtServer = (*extServer)(nil)

// ConditionPolicyApplied is the sandbox condition set when the supervisor refuses a
// policy version.
const ConditionPolicyApplied = "PolicyApplied"

// UpdateSandboxPolicy replaces the sandbox's policy and bumps its policy version. Only
// the network sections may change: filesystem, landlock and process are applied by the
// supervisor when the sandbox starts. Omitted static sections keep their current value.
func (x *extServer) UpdateSandboxPolicy(ctx context.Context, req *openshellv1.UpdateSandboxPolicyRequest) (*openshellv1.UpdateSandboxPolicyResponse, error) {
	s := x.s
	if req.GetPolicy() == nil {
		return nil, invalidf("policy is required (read it from a file with `openshell policy set NAME --policy FILE`)")
	}
	cur, err := s.loadByName(ctx, req.GetWorkspace(), req.GetName())
	if err != nil {
		return nil, err
	}
	name := req.GetName()
	var resp openshellv1.UpdateSandboxPolicyResponse
	_, err = s.mutate(ctx, cur.id(), func(r *record) error {
		old := r.sb.GetSpec().GetPolicy()
		next, err := mergeStaticSections(name, old, req.GetPolicy())
		if err != nil {
			return err
		}
		if proto.Equal(old, next) {
			resp.Version, resp.PolicyHash = r.currentPolicyVersion(), policy.Hash(next)
			return errNoChange
		}
		if r.sb.Spec == nil {
			r.sb.Spec = &openshellv1.SandboxSpec{}
		}
		r.sb.Spec.Policy = next
		r.policyVersion = r.currentPolicyVersion() + 1
		resp.Version, resp.PolicyHash = r.policyVersion, policy.Hash(next)
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.log.Info("sandbox policy updated", "sandbox_id", cur.id(), "sandbox", name, "version", resp.Version, "policy_hash", resp.PolicyHash)
	s.gatewayLog(cur.id(), "INFO", fmt.Sprintf("policy version %d stored (hash %s); waiting for the supervisor to apply it", resp.Version, resp.PolicyHash))
	return &resp, nil
}

// mergeStaticSections validates next and fills its omitted static sections from the
// current policy (or the default policy when the sandbox has none); empty sections count as omitted. A changed static
// section is FAILED_PRECONDITION.
func mergeStaticSections(sandbox string, old, next *sandboxv1.SandboxPolicy) (*sandboxv1.SandboxPolicy, error) {
	next = proto.Clone(next).(*sandboxv1.SandboxPolicy)
	base := old
	if base == nil {
		base = policy.Default().ToProto()
	}
	// Empty sections count as omitted: a policy file with only network_policies parses
	// into empty static sections.
	if proto.Size(next.GetFilesystem()) == 0 {
		next.Filesystem = proto.Clone(base.GetFilesystem()).(*sandboxv1.FilesystemPolicy)
	}
	if proto.Size(next.GetLandlock()) == 0 {
		next.Landlock = proto.Clone(base.GetLandlock()).(*sandboxv1.LandlockPolicy)
	}
	if proto.Size(next.GetProcess()) == 0 {
		next.Process = proto.Clone(base.GetProcess()).(*sandboxv1.ProcessPolicy)
	}
	np, err := policy.FromProto(next)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "policy for sandbox %s is invalid: %v", sandbox, err)
	}
	// Compare the normalized static sections so spelling differences that mean the
	// same policy are not refused.
	nn := np.ToProto()
	on := base
	if op, err := policy.FromProto(base); err == nil {
		on = op.ToProto()
	}
	var changed []string
	if !proto.Equal(on.GetFilesystem(), nn.GetFilesystem()) {
		changed = append(changed, "filesystem_policy")
	}
	if !proto.Equal(on.GetLandlock(), nn.GetLandlock()) {
		changed = append(changed, "landlock")
	}
	if !proto.Equal(on.GetProcess(), nn.GetProcess()) {
		changed = append(changed, "process")
	}
	if len(changed) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition,
			"sandbox %s: the policy changes %v, which apply only when a sandbox is created; keep those sections as they are (or omit them) and update only network_policies, or recreate the sandbox with the new policy",
			sandbox, changed)
	}
	return next, nil
}

// ReportPolicyStatus records whether the supervisor applied a policy version.
func (x *extServer) ReportPolicyStatus(ctx context.Context, req *openshellv1.ReportPolicyStatusRequest) (*openshellv1.ReportPolicyStatusResponse, error) {
	s := x.s
	id := req.GetSandboxId()
	if id == "" || req.GetVersion() == 0 {
		return nil, invalidf("sandbox_id and version are required")
	}
	if err := auth.RequireSandbox(ctx, id); err != nil {
		return nil, err
	}
	v := req.GetVersion()
	_, err := s.mutate(ctx, id, func(r *record) error {
		if v > r.currentPolicyVersion() {
			return invalidf("sandbox %s: reported policy version %d is newer than the stored version %d", id, v, r.currentPolicyVersion())
		}
		applied := r.sb.GetStatus().GetCurrentPolicyVersion()
		if v < applied {
			return errNoChange // a late report about an older version
		}
		if req.GetApplied() {
			if v == applied && r.policyError == "" {
				return errNoChange
			}
			r.sb.Status.CurrentPolicyVersion = v
			r.policyError = ""
			return nil
		}
		msg := req.GetError()
		if msg == "" {
			msg = "the supervisor did not say why"
		}
		r.policyError = fmt.Sprintf("policy version %d was not applied: %s", v, msg)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if req.GetApplied() {
		s.log.Info("supervisor applied policy", "sandbox_id", id, "version", v)
		s.gatewayLog(id, "INFO", fmt.Sprintf("supervisor applied policy version %d", v))
	} else {
		s.log.Warn("supervisor refused policy", "sandbox_id", id, "version", v, "err", req.GetError())
		s.gatewayLog(id, "ERROR", fmt.Sprintf("supervisor did not apply policy version %d: %s", v, req.GetError()))
	}
	return &openshellv1.ReportPolicyStatusResponse{}, nil
}

// policyCondition is the PolicyApplied=False condition while the supervisor's last
// report was a refusal.
func policyCondition(r *record) []*openshellv1.SandboxCondition {
	if r.policyError == "" {
		return nil
	}
	return []*openshellv1.SandboxCondition{{Type: ConditionPolicyApplied, Status: "False", Reason: "PolicyRejected", Message: r.policyError}}
}
