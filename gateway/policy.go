package gateway

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/api/sandboxv1"
	"github.com/openshell/openshell/gateway/auth"
	"github.com/openshell/openshell/gateway/store"
	"github.com/openshell/openshell/supervisor/policy"
)

// Live policy: UpdateConfig stores a new policy version for a sandbox, its supervisor
// picks it up through GetSandboxConfig and answers with ReportPolicyStatus. Every
// version is kept as a revision row (kind policy_revision, named "<sandbox id>/<version>",
// labelled with the sandbox id) so ListSandboxPolicies and GetSandboxPolicyStatus can
// show the history. Version 1 (the policy given at create) gets its row the first time
// a later version is stored; until then it is read from the sandbox record.

// ConditionPolicyApplied is the sandbox condition set when the supervisor refuses a
// policy version.
const ConditionPolicyApplied = "PolicyApplied"

const (
	kindPolicyRevision = "policy_revision"
	labelSandboxID     = "openshell.io/sandbox-id"
)

var errGlobalPolicy = status.Error(codes.Unimplemented, "gateway-wide (global) policies and settings are not implemented by this gateway; set the policy of one sandbox (name) instead")

// UpdateConfig replaces a sandbox's policy (policy, or merge_operations applied to the
// current one) and bumps its policy version. Only the network sections may change:
// filesystem, landlock and process are applied by the supervisor when the sandbox
// starts. Omitted static sections keep their current value.
func (s *Server) UpdateConfig(ctx context.Context, req *openshellv1.UpdateConfigRequest) (*openshellv1.UpdateConfigResponse, error) {
	switch {
	case req.GetGlobal():
		return nil, errGlobalPolicy
	case req.GetSettingKey() != "" || req.GetDeleteSetting() || req.GetSettingValue() != nil:
		return nil, status.Error(codes.Unimplemented, "sandbox settings (setting_key, setting_value, delete_setting) are not implemented by this gateway; only the policy can be updated")
	case req.GetPolicy() == nil && len(req.GetMergeOperations()) == 0:
		return nil, invalidf("policy or merge_operations is required (read a policy from a file with `openshell policy set NAME --policy FILE`)")
	case req.GetPolicy() != nil && len(req.GetMergeOperations()) > 0:
		return nil, invalidf("give either policy or merge_operations, not both")
	}
	if p := auth.FromContext(ctx); p.Kind == auth.SandboxKind {
		return nil, status.Error(codes.PermissionDenied, "a sandbox may not change its own policy")
	}
	cur, err := s.loadByName(ctx, req.GetWorkspace(), req.GetName())
	if err != nil {
		return nil, err
	}
	name := req.GetName()
	var resp openshellv1.UpdateConfigResponse
	var prev, stored *sandboxv1.SandboxPolicy
	var prevVersion uint32
	_, err = s.mutate(ctx, cur.id(), func(r *record) error {
		if rv := req.GetExpectedResourceVersion(); rv != 0 && rv != r.obj.ResourceVersion {
			return status.Errorf(codes.Aborted, "sandbox %s changed (resource version %d, expected %d); read it again and retry", name, r.obj.ResourceVersion, rv)
		}
		old := r.sb.GetSpec().GetPolicy()
		want := req.GetPolicy()
		if want == nil {
			base := old
			if base == nil {
				base = policy.Default().ToProto()
			}
			var err error
			if want, err = applyMerge(name, base, req.GetMergeOperations()); err != nil {
				return err
			}
		}
		next, err := mergeStaticSections(name, old, want)
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
		prev, prevVersion = old, r.currentPolicyVersion()
		r.sb.Spec.Policy = next
		r.policyVersion = prevVersion + 1
		stored = next
		resp.Version, resp.PolicyHash = r.policyVersion, policy.Hash(next)
		return nil
	})
	if err != nil {
		return nil, err
	}
	resp.Annotations = req.GetAnnotations()
	if stored == nil {
		return &resp, nil
	}
	if prev == nil {
		prev = policy.Default().ToProto()
	}
	// The create-time version's row, if nobody wrote it yet, then the new one. A lost
	// row is not fatal: the current version is also read from the sandbox record.
	wctx := context.WithoutCancel(ctx)
	if err := s.putRevision(wctx, cur, &openshellv1.SandboxPolicyRevision{Version: prevVersion, PolicyHash: policy.Hash(prev), Policy: prev,
		CreatedAtMs: cur.obj.CreatedAtMs}); err != nil && !errors.Is(err, store.ErrAlreadyExists) {
		s.log.Error("policy revision not stored", "sandbox_id", cur.id(), "version", prevVersion, "err", err)
	}
	if err := s.putRevision(wctx, cur, &openshellv1.SandboxPolicyRevision{Version: resp.Version, PolicyHash: resp.PolicyHash, Policy: stored,
		CreatedAtMs: time.Now().UnixMilli(), Provenance: req.GetAnnotations()}); err != nil {
		s.log.Error("policy revision not stored", "sandbox_id", cur.id(), "version", resp.Version, "err", err)
	}
	s.log.Info("sandbox policy updated", "sandbox_id", cur.id(), "sandbox", name, "version", resp.Version, "policy_hash", resp.PolicyHash)
	s.gatewayLog(cur.id(), "INFO", fmt.Sprintf("policy version %d stored (hash %s); waiting for the supervisor to apply it", resp.Version, resp.PolicyHash))
	return &resp, nil
}

// applyMerge applies add_rule and remove_rule operations to a copy of base; the
// finer-grained operations (endpoints, binaries, L7 rules) are refused by name.
func applyMerge(sandbox string, base *sandboxv1.SandboxPolicy, ops []*openshellv1.PolicyMergeOperation) (*sandboxv1.SandboxPolicy, error) {
	next := proto.Clone(base).(*sandboxv1.SandboxPolicy)
	if next.NetworkPolicies == nil {
		next.NetworkPolicies = map[string]*sandboxv1.NetworkPolicyRule{}
	}
	for i, op := range ops {
		switch o := op.GetOperation().(type) {
		case *openshellv1.PolicyMergeOperation_AddRule:
			if o.AddRule.GetRuleName() == "" || o.AddRule.GetRule() == nil {
				return nil, invalidf("sandbox %s: merge_operations[%d].add_rule needs rule_name and rule", sandbox, i)
			}
			next.NetworkPolicies[o.AddRule.GetRuleName()] = o.AddRule.GetRule()
		case *openshellv1.PolicyMergeOperation_RemoveRule:
			if _, ok := next.NetworkPolicies[o.RemoveRule.GetRuleName()]; !ok {
				return nil, status.Errorf(codes.NotFound, "sandbox %s: merge_operations[%d].remove_rule: the policy has no rule %q", sandbox, i, o.RemoveRule.GetRuleName())
			}
			delete(next.NetworkPolicies, o.RemoveRule.GetRuleName())
		case nil:
			return nil, invalidf("sandbox %s: merge_operations[%d] sets no operation", sandbox, i)
		default:
			return nil, status.Errorf(codes.Unimplemented, "sandbox %s: merge_operations[%d] (%T) is not implemented by this gateway; use add_rule/remove_rule or give the whole policy", sandbox, i, o)
		}
	}
	return next, nil
}

func revisionName(sandboxID string, v uint32) string { return fmt.Sprintf("%s/%010d", sandboxID, v) }

func (s *Server) putRevision(ctx context.Context, sb *record, rev *openshellv1.SandboxPolicyRevision) error {
	data, err := proto.Marshal(rev)
	if err != nil {
		return err
	}
	_, err = s.st.Create(ctx, &store.Object{Kind: kindPolicyRevision, ID: uuid.NewString(), Workspace: sb.obj.Workspace,
		Name: revisionName(sb.id(), rev.GetVersion()), Labels: map[string]string{labelSandboxID: sb.id()}, Data: data})
	return err
}

// revisions returns the sandbox's policy history, newest first, with each status as
// of now: LOADED for the version the supervisor runs, SUPERSEDED for older loaded or
// pending versions, PENDING for newer ones not yet reported, FAILED as reported.
func (s *Server) revisions(ctx context.Context, r *record) ([]*openshellv1.SandboxPolicyRevision, error) {
	objs, err := s.st.List(ctx, kindPolicyRevision, store.ListOptions{Workspace: r.obj.Workspace, Selector: map[string]string{labelSandboxID: r.id()}})
	if err != nil {
		return nil, err
	}
	byVersion := map[uint32]*openshellv1.SandboxPolicyRevision{}
	for _, o := range objs {
		rev := &openshellv1.SandboxPolicyRevision{}
		if err := proto.Unmarshal(o.Data, rev); err != nil {
			return nil, status.Errorf(codes.DataLoss, "sandbox %s: policy revision %s is corrupt: %v", r.id(), o.Name, err)
		}
		byVersion[rev.GetVersion()] = rev
	}
	cur := r.currentPolicyVersion()
	if _, ok := byVersion[cur]; !ok {
		p := r.sb.GetSpec().GetPolicy()
		if p == nil {
			p = policy.Default().ToProto()
		}
		byVersion[cur] = &openshellv1.SandboxPolicyRevision{Version: cur, PolicyHash: policy.Hash(p), Policy: p, CreatedAtMs: r.obj.CreatedAtMs}
	}
	active := r.sb.GetStatus().GetCurrentPolicyVersion()
	out := make([]*openshellv1.SandboxPolicyRevision, 0, len(byVersion))
	for _, rev := range byVersion {
		switch {
		case rev.GetStatus() == openshellv1.PolicyStatus_POLICY_STATUS_FAILED:
		case rev.GetVersion() == active:
			rev.Status = openshellv1.PolicyStatus_POLICY_STATUS_LOADED
		case rev.GetVersion() < active:
			rev.Status = openshellv1.PolicyStatus_POLICY_STATUS_SUPERSEDED
		default:
			rev.Status = openshellv1.PolicyStatus_POLICY_STATUS_PENDING
		}
		out = append(out, rev)
	}
	slices.SortFunc(out, func(a, b *openshellv1.SandboxPolicyRevision) int { return int(b.GetVersion()) - int(a.GetVersion()) })
	return out, nil
}

// ListSandboxPolicies lists a sandbox's policy revisions, newest first.
func (s *Server) ListSandboxPolicies(ctx context.Context, req *openshellv1.ListSandboxPoliciesRequest) (*openshellv1.ListSandboxPoliciesResponse, error) {
	if req.GetGlobal() {
		return nil, errGlobalPolicy
	}
	r, err := s.loadByName(ctx, req.GetWorkspace(), req.GetName())
	if err != nil {
		return nil, err
	}
	revs, err := s.revisions(ctx, r)
	if err != nil {
		return nil, err
	}
	return &openshellv1.ListSandboxPoliciesResponse{Revisions: page(revs, req.GetOffset(), req.GetLimit())}, nil
}

// GetSandboxPolicyStatus returns one revision (version 0 = the newest) and the
// version the supervisor runs.
func (s *Server) GetSandboxPolicyStatus(ctx context.Context, req *openshellv1.GetSandboxPolicyStatusRequest) (*openshellv1.GetSandboxPolicyStatusResponse, error) {
	if req.GetGlobal() {
		return nil, errGlobalPolicy
	}
	r, err := s.loadByName(ctx, req.GetWorkspace(), req.GetName())
	if err != nil {
		return nil, err
	}
	revs, err := s.revisions(ctx, r)
	if err != nil {
		return nil, err
	}
	resp := &openshellv1.GetSandboxPolicyStatusResponse{ActiveVersion: r.sb.GetStatus().GetCurrentPolicyVersion()}
	for _, rev := range revs {
		if req.GetVersion() == 0 || rev.GetVersion() == req.GetVersion() {
			resp.Revision = rev
			return resp, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "sandbox %s has no policy version %d (see `openshell policy list %s`)", req.GetName(), req.GetVersion(), req.GetName())
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

// ReportPolicyStatus records whether the supervisor loaded a policy version.
func (s *Server) ReportPolicyStatus(ctx context.Context, req *openshellv1.ReportPolicyStatusRequest) (*openshellv1.ReportPolicyStatusResponse, error) {
	id := req.GetSandboxId()
	if id == "" || req.GetVersion() == 0 {
		return nil, invalidf("sandbox_id and version are required")
	}
	st := req.GetStatus()
	if st != openshellv1.PolicyStatus_POLICY_STATUS_LOADED && st != openshellv1.PolicyStatus_POLICY_STATUS_FAILED {
		return nil, invalidf("sandbox %s: status %s cannot be reported; report POLICY_STATUS_LOADED or POLICY_STATUS_FAILED", id, st)
	}
	if err := auth.RequireSandbox(ctx, id); err != nil {
		return nil, err
	}
	loaded := st == openshellv1.PolicyStatus_POLICY_STATUS_LOADED
	v := req.GetVersion()
	r, err := s.mutate(ctx, id, func(r *record) error {
		if v > r.currentPolicyVersion() {
			return invalidf("sandbox %s: reported policy version %d is newer than the stored version %d", id, v, r.currentPolicyVersion())
		}
		applied := r.sb.GetStatus().GetCurrentPolicyVersion()
		if v < applied {
			return errNoChange // a late report about an older version
		}
		if loaded {
			if v == applied && r.policyError == "" {
				return errNoChange
			}
			r.sb.Status.CurrentPolicyVersion = v
			r.policyError = ""
			return nil
		}
		msg := req.GetLoadError()
		if msg == "" {
			msg = "the supervisor did not say why"
		}
		r.policyError = fmt.Sprintf("policy version %d was not applied: %s", v, msg)
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.markRevision(ctx, r, v, loaded, req.GetLoadError())
	if loaded {
		s.log.Info("supervisor applied policy", "sandbox_id", id, "version", v)
		s.gatewayLog(id, "INFO", fmt.Sprintf("supervisor applied policy version %d", v))
	} else {
		s.log.Warn("supervisor refused policy", "sandbox_id", id, "version", v, "err", req.GetLoadError())
		s.gatewayLog(id, "ERROR", fmt.Sprintf("supervisor did not apply policy version %d: %s", v, req.GetLoadError()))
	}
	return &openshellv1.ReportPolicyStatusResponse{}, nil
}

// markRevision stores the outcome on the version's revision row (when it has one).
func (s *Server) markRevision(ctx context.Context, r *record, v uint32, loaded bool, loadErr string) {
	o, err := s.st.GetByName(ctx, kindPolicyRevision, r.obj.Workspace, revisionName(r.id(), v))
	if err != nil {
		return // version 1 before any update: its state is the record's
	}
	rev := &openshellv1.SandboxPolicyRevision{}
	if proto.Unmarshal(o.Data, rev) != nil {
		return
	}
	if loaded {
		rev.Status, rev.LoadError, rev.LoadedAtMs = openshellv1.PolicyStatus_POLICY_STATUS_LOADED, "", time.Now().UnixMilli()
	} else {
		rev.Status, rev.LoadError = openshellv1.PolicyStatus_POLICY_STATUS_FAILED, loadErr
	}
	if o.Data, err = proto.Marshal(rev); err == nil {
		_, err = s.st.Update(ctx, o)
	}
	if err != nil {
		s.log.Warn("policy revision status not stored", "sandbox_id", r.id(), "version", v, "err", err)
	}
}

// policyCondition is the PolicyApplied=False condition while the supervisor's last
// report was a refusal.
func policyCondition(r *record) []*openshellv1.SandboxCondition {
	if r.policyError == "" {
		return nil
	}
	return []*openshellv1.SandboxCondition{{Type: ConditionPolicyApplied, Status: "False", Reason: "PolicyRejected", Message: r.policyError}}
}

// sweepRevisions removes the policy revisions of sandboxes that no longer exist (a
// deleted sandbox leaves its rows behind; they are only read through a live sandbox).
func (s *Server) sweepRevisions(ctx context.Context) {
	objs, err := s.st.List(ctx, kindPolicyRevision, store.ListOptions{AllWorkspaces: true})
	if err != nil {
		s.log.Warn("policy revision sweep: list failed", "err", err)
		return
	}
	gone := map[string]bool{}
	removed := 0
	for _, o := range objs {
		id := o.Labels[labelSandboxID]
		if _, seen := gone[id]; !seen {
			_, err := s.st.Get(ctx, kindSandbox, id)
			gone[id] = errors.Is(err, store.ErrNotFound)
		}
		if !gone[id] {
			continue
		}
		if err := s.st.Delete(ctx, kindPolicyRevision, o.ID, o.ResourceVersion); err != nil && !errors.Is(err, store.ErrNotFound) {
			s.log.Warn("policy revision sweep: delete failed", "revision", o.Name, "err", err)
			continue
		}
		removed++
	}
	if removed > 0 {
		s.log.Info("removed policy revisions of deleted sandboxes", "revisions", removed)
	}
}
