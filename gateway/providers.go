package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"regexp"
	"slices"
	"strings"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/openshell/openshell/api/datamodelv1"
	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/gateway/auth"
	"github.com/openshell/openshell/gateway/store"
	"github.com/openshell/openshell/internal/hostcred"
	"github.com/openshell/openshell/supervisor/credentials"
)

// Providers are gateway-wide named credential sets (upstream's datamodel.Provider).
// The store row keeps the name in the clear (it is unique and listed) and only
// ciphertext in Data: the sealed Provider message (type, credentials, config; no
// metadata), bound to the row's id.
//
// Where the credentials may be sent lives in Provider.config (keys in package
// credentials: hosts, headers, allow_wildcard_hosts). Other config keys are kept as
// given.
const (
	kindProvider      = "provider"
	providerWorkspace = "global"
	maxCredentials    = 64
	maxCredentialSize = 64 << 10
	maxConfigEntries  = 64
	maxConfigValue    = 4 << 10
)

var (
	providerNameRE   = regexp.MustCompile(`^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$`)
	credentialKeyRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)
	configKeyRE      = regexp.MustCompile(`^[A-Za-z0-9_.\-/]{1,128}$`)
	errSecretsAbsent = status.Error(codes.FailedPrecondition, "this gateway has no secrets key configured, so it cannot store provider credentials (start it with a state directory)")
)

func providerAD(id string) []byte { return []byte(kindProvider + "/" + id) }

// bindingOf is the supervisor's view of a stored provider.
func bindingOf(name string, p *datamodelv1.Provider) credentials.Provider {
	return credentials.FromConfig(name, p.GetType(), p.GetCredentials(), p.GetConfig())
}

func validateProvider(name string, p *datamodelv1.Provider) error {
	if !providerNameRE.MatchString(name) {
		return invalidf("provider.metadata.name %q must be 1-63 lowercase letters, digits, '-' or '_', starting and ending with a letter or digit", name)
	}
	if p.GetType() == "" || len(p.GetType()) > 63 {
		return invalidf("provider %s: provider.type is required (at most 63 characters), e.g. --type github", name)
	}
	if len(p.GetCredentials()) == 0 {
		return invalidf("provider %s: at least one credential is required (--credential KEY[=VALUE])", name)
	}
	if len(p.GetCredentials()) > maxCredentials {
		return invalidf("provider %s: %d credentials, at most %d", name, len(p.GetCredentials()), maxCredentials)
	}
	for k, v := range p.GetCredentials() {
		if !credentialKeyRE.MatchString(k) {
			return invalidf("provider %s: credential key %q must look like an environment variable name (letters, digits, '_', not starting with a digit)", name, k)
		}
		if len(v) > maxCredentialSize {
			return invalidf("provider %s: credential %s is %d bytes, at most %d", name, k, len(v), maxCredentialSize)
		}
	}
	if len(p.GetCredentialHandles()) > 0 {
		return invalidf("provider %s: provider.credential_handles need a credential driver, which this gateway does not have; give the values in provider.credentials", name)
	}
	if len(p.GetConfig()) > maxConfigEntries {
		return invalidf("provider %s: %d config entries, at most %d", name, len(p.GetConfig()), maxConfigEntries)
	}
	for k, v := range p.GetConfig() {
		if !configKeyRE.MatchString(k) || len(v) > maxConfigValue {
			return invalidf("provider %s: config key %q must be 1-128 letters, digits or _.-/ with a value of at most %d bytes", name, k, maxConfigValue)
		}
	}
	if w := p.GetConfig()[credentials.ConfigAllowWildcardHosts]; w != "" && w != "true" && w != "false" {
		return invalidf("provider %s: config %s is %q; use true or false", name, credentials.ConfigAllowWildcardHosts, w)
	}
	b := bindingOf(name, p)
	for i, h := range b.Hosts {
		if len(h) > 253 {
			return invalidf("provider %s: config hosts[%d] %q must be a host name or pattern of 1-253 characters", name, i, h)
		}
	}
	// Where the credentials may go (wildcards only when asked for, header names).
	if err := b.ValidateBinding(); err != nil {
		return invalidf("%s", strings.TrimPrefix(err.Error(), "credentials: "))
	}
	return nil
}

// sealProvider stores p's payload (no metadata: the row holds it) for row id.
func (s *Server) sealProvider(id string, p *datamodelv1.Provider) ([]byte, error) {
	payload := &datamodelv1.Provider{Type: p.GetType(), Credentials: p.GetCredentials(), Config: p.GetConfig(),
		CredentialExpiresAtMs: p.GetCredentialExpiresAtMs()}
	plain, err := proto.MarshalOptions{Deterministic: true}.Marshal(payload)
	if err != nil {
		return nil, err
	}
	return s.opts.Secrets.Seal(plain, providerAD(id))
}

func (s *Server) CreateProvider(ctx context.Context, req *openshellv1.CreateProviderRequest) (*openshellv1.ProviderResponse, error) {
	if s.opts.Secrets == nil {
		return nil, errSecretsAbsent
	}
	p := req.GetProvider()
	if p == nil {
		return nil, invalidf("provider is required (metadata.name, type, credentials)")
	}
	name := p.GetMetadata().GetName()
	if err := validateProvider(name, p); err != nil {
		return nil, err
	}
	id := uuid.NewString()
	sealed, err := s.sealProvider(id, p)
	if err != nil {
		return nil, fmt.Errorf("provider %s: %w", name, err)
	}
	obj, err := s.st.Create(ctx, &store.Object{Kind: kindProvider, ID: id, Workspace: providerWorkspace, Name: name, Data: sealed})
	if errors.Is(err, store.ErrAlreadyExists) {
		return nil, fmt.Errorf("provider %q already exists; update it (`openshell provider update %s`) or delete it first: %w", name, name, err)
	}
	if err != nil {
		return nil, err
	}
	s.log.Info("provider created", "provider", name, "type", p.GetType(), "keys", len(p.GetCredentials()))
	return &openshellv1.ProviderResponse{Provider: providerView(obj, p)}, nil
}

func (s *Server) GetProvider(ctx context.Context, req *openshellv1.GetProviderRequest) (*openshellv1.ProviderResponse, error) {
	obj, p, err := s.loadProvider(ctx, req.GetName())
	if err != nil {
		return nil, err
	}
	return &openshellv1.ProviderResponse{Provider: providerView(obj, p)}, nil
}

func (s *Server) ListProviders(ctx context.Context, req *openshellv1.ListProvidersRequest) (*openshellv1.ListProvidersResponse, error) {
	objs, err := s.st.List(ctx, kindProvider, store.ListOptions{Workspace: providerWorkspace})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(objs, func(a, b *store.Object) int { return strings.Compare(a.Name, b.Name) })
	objs = page(objs, req.GetOffset(), req.GetLimit())
	resp := &openshellv1.ListProvidersResponse{}
	for _, o := range objs {
		p, err := s.openProvider(o)
		if err != nil {
			return nil, err
		}
		resp.Providers = append(resp.Providers, providerView(o, p))
	}
	return resp, nil
}

// page applies offset and limit (0 = no limit).
func page[T any](xs []T, offset, limit uint32) []T {
	if int(offset) >= len(xs) {
		return nil
	}
	xs = xs[offset:]
	if limit > 0 && int(limit) < len(xs) {
		xs = xs[:limit]
	}
	return xs
}

// UpdateProvider changes a provider's type, credentials and config. A credential
// given with an empty value keeps its stored value (providers are returned with
// empty values, so a read-modify-write does not wipe them); config entries replace
// the stored ones key by key, and an empty value removes a key.
func (s *Server) UpdateProvider(ctx context.Context, req *openshellv1.UpdateProviderRequest) (*openshellv1.ProviderResponse, error) {
	in := req.GetProvider()
	if in == nil {
		return nil, invalidf("provider is required (metadata.name and the fields to change)")
	}
	name := in.GetMetadata().GetName()
	obj, cur, err := s.loadProvider(ctx, name)
	if err != nil {
		return nil, err
	}
	if rv := in.GetMetadata().GetResourceVersion(); rv != 0 && rv != obj.ResourceVersion {
		return nil, status.Errorf(codes.Aborted, "provider %s changed since it was read (resource version %d, now %d); read it again and retry", name, rv, obj.ResourceVersion)
	}
	next := proto.Clone(cur).(*datamodelv1.Provider)
	if in.GetType() != "" {
		next.Type = in.GetType()
	}
	if next.Credentials == nil {
		next.Credentials = map[string]string{}
	}
	for k, v := range in.GetCredentials() {
		if v != "" {
			next.Credentials[k] = v
		} else if _, ok := next.Credentials[k]; !ok {
			return nil, invalidf("provider %s: credential %s has no stored value to keep; give its value", name, k)
		}
	}
	if next.Config == nil {
		next.Config = map[string]string{}
	}
	for k, v := range in.GetConfig() {
		if v == "" {
			delete(next.Config, k)
		} else {
			next.Config[k] = v
		}
	}
	for k, v := range req.GetCredentialExpiresAtMs() {
		if next.CredentialExpiresAtMs == nil {
			next.CredentialExpiresAtMs = map[string]int64{}
		}
		next.CredentialExpiresAtMs[k] = v
	}
	next.CredentialHandles = in.GetCredentialHandles()
	if err := validateProvider(name, next); err != nil {
		return nil, err
	}
	sealed, err := s.sealProvider(obj.ID, next)
	if err != nil {
		return nil, fmt.Errorf("provider %s: %w", name, err)
	}
	upd := obj.Clone()
	upd.Data = sealed
	nobj, err := s.st.Update(ctx, upd)
	if errors.Is(err, store.ErrConflict) {
		return nil, status.Errorf(codes.Aborted, "provider %s changed while it was being updated; retry", name)
	}
	if err != nil {
		return nil, fmt.Errorf("provider %s: %w", name, err)
	}
	s.log.Info("provider updated", "provider", name, "type", next.GetType(), "keys", len(next.GetCredentials()))
	return &openshellv1.ProviderResponse{Provider: providerView(nobj, next)}, nil
}

func (s *Server) DeleteProvider(ctx context.Context, req *openshellv1.DeleteProviderRequest) (*openshellv1.DeleteProviderResponse, error) {
	if req.GetName() == "" {
		return nil, invalidf("provider name is required")
	}
	obj, err := s.st.GetByName(ctx, kindProvider, providerWorkspace, req.GetName())
	if err != nil {
		return nil, providerNotFound(req.GetName(), err)
	}
	// Two phases against a concurrent CreateSandbox or AttachSandboxProvider naming
	// this provider: mark the provider as being deleted, then look for users. A create
	// or attach stores its sandbox first and then checks its providers, so one of the
	// two always sees the other: the create fails, or this delete does.
	marked := obj.Clone()
	if marked.Labels == nil {
		marked.Labels = map[string]string{}
	}
	marked.Labels[providerDeletingLabel] = "true"
	obj, err = s.st.Update(ctx, marked)
	if err != nil {
		return nil, fmt.Errorf("provider %s: %w", req.GetName(), err)
	}
	users, err := s.sandboxesUsingProvider(ctx, req.GetName())
	if err == nil && len(users) > 0 {
		err = status.Errorf(codes.FailedPrecondition, "provider %q is used by sandbox %s; detach it (`openshell sandbox provider detach SANDBOX %s`) or delete the sandbox first", req.GetName(), users[0], req.GetName())
	}
	if err != nil {
		unmarked := obj.Clone()
		delete(unmarked.Labels, providerDeletingLabel)
		if _, uerr := s.st.Update(context.WithoutCancel(ctx), unmarked); uerr != nil {
			s.log.Error("provider left marked as being deleted", "provider", req.GetName(), "err", uerr)
		}
		return nil, err
	}
	if err := s.st.Delete(ctx, kindProvider, obj.ID, obj.ResourceVersion); err != nil {
		return nil, fmt.Errorf("provider %s: %w", req.GetName(), err)
	}
	s.log.Info("provider deleted", "provider", req.GetName())
	return &openshellv1.DeleteProviderResponse{Deleted: true}, nil
}

// GetSandboxProviderEnvironment gives a sandbox's supervisor its providers. The auth
// mode admits only sandbox tokens, and only for their own sandbox. A caller that
// supports static credential bindings gets the real values with, per key, the hosts
// and headers they are bound to (encoding in credentials.EnvironmentResponse); any
// other caller gets placeholders only, which resolve nowhere, since this gateway
// never lets a credential leave without its binding. For a VM sandbox the real
// values go only to its runner on the host, never into the guest: the caller must
// also show the runner credential (see checkRunner).
func (s *Server) GetSandboxProviderEnvironment(ctx context.Context, req *openshellv1.GetSandboxProviderEnvironmentRequest) (*openshellv1.GetSandboxProviderEnvironmentResponse, error) {
	id := req.GetSandboxId()
	if id == "" {
		return nil, invalidf("sandbox_id is required")
	}
	if p := auth.FromContext(ctx); p.Kind != auth.SandboxKind {
		return nil, status.Error(codes.PermissionDenied, "provider credentials are only given to the sandbox's own supervisor")
	}
	if err := auth.RequireSandbox(ctx, id); err != nil {
		return nil, err
	}
	withValues := req.GetSupportsStaticCredentialBindings()
	if withValues {
		if err := s.checkRunner(ctx, id); err != nil {
			return nil, err
		}
	}
	r, err := s.load(ctx, id)
	if err != nil {
		return nil, err
	}
	var ps []credentials.Provider
	expires := map[string]int64{}
	// The revision changes when the set of providers or any of them changes (not
	// with the sandbox's status), so a caller can tell whether to reload.
	rev := fnv.New64a()
	for _, name := range r.sb.GetSpec().GetProviders() {
		obj, p, err := s.loadProvider(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("sandbox %s: provider %s: %w", id, name, err)
		}
		ps = append(ps, bindingOf(name, p))
		maps.Copy(expires, p.GetCredentialExpiresAtMs())
		fmt.Fprintf(rev, "%s/%s/%d;", name, obj.ID, obj.ResourceVersion)
	}
	resp, err := credentials.EnvironmentResponse(ps)
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "sandbox %s: %v", id, strings.TrimPrefix(err.Error(), "credentials: "))
	}
	resp.ProviderEnvRevision = rev.Sum64()
	if len(expires) > 0 {
		resp.CredentialExpiresAtMs = expires
	}
	if !withValues {
		resp.StaticCredentialBindings, resp.DynamicCredentials = nil, nil
		for _, p := range ps {
			for k := range p.Credentials {
				resp.Environment[k] = placeholderFor(p.Name, k)
			}
		}
	}
	return resp, nil
}

// placeholderFor is a fresh placeholder in the supervisor's format; the gateway keeps
// no mapping, so it resolves nowhere.
func placeholderFor(provider, key string) string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return credentials.PlaceholderPrefix + provider + ":" + key + ":" + hex.EncodeToString(b)
}

// ListSandboxProviders lists the providers attached to a sandbox (values redacted).
func (s *Server) ListSandboxProviders(ctx context.Context, req *openshellv1.ListSandboxProvidersRequest) (*openshellv1.ListSandboxProvidersResponse, error) {
	r, err := s.loadByName(ctx, req.GetWorkspace(), req.GetSandboxName())
	if err != nil {
		return nil, err
	}
	resp := &openshellv1.ListSandboxProvidersResponse{}
	for _, name := range r.sb.GetSpec().GetProviders() {
		obj, p, err := s.loadProvider(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("sandbox %s: provider %s: %w", req.GetSandboxName(), name, err)
		}
		resp.Providers = append(resp.Providers, providerView(obj, p))
	}
	return resp, nil
}

// AttachSandboxProvider adds a provider to a sandbox. The supervisor reads its
// providers when it starts, so a running sandbox sees the change after a restart
// (openshell sandbox stop/start).
func (s *Server) AttachSandboxProvider(ctx context.Context, req *openshellv1.AttachSandboxProviderRequest) (*openshellv1.AttachSandboxProviderResponse, error) {
	name := req.GetProviderName()
	if name == "" {
		return nil, invalidf("provider_name is required")
	}
	cur, err := s.loadByName(ctx, req.GetWorkspace(), req.GetSandboxName())
	if err != nil {
		return nil, err
	}
	if err := s.checkProviders(ctx, []string{name}); err != nil {
		return nil, err
	}
	// The agent's environment has one variable per key: refuse a provider whose keys
	// another attached provider already sets.
	_, added, err := s.loadProvider(ctx, name)
	if err != nil {
		return nil, err
	}
	for _, other := range cur.sb.GetSpec().GetProviders() {
		if other == name {
			continue
		}
		_, op, err := s.loadProvider(ctx, other)
		if err != nil {
			return nil, err
		}
		for k := range added.GetCredentials() {
			if _, dup := op.GetCredentials()[k]; dup {
				return nil, status.Errorf(codes.FailedPrecondition, "sandbox %s: providers %s and %s both set %s; a sandbox's providers must use distinct keys", req.GetSandboxName(), other, name, k)
			}
		}
	}
	attached := false
	r, err := s.mutate(ctx, cur.id(), func(r *record) error {
		if rv := req.GetExpectedResourceVersion(); rv != 0 && rv != r.obj.ResourceVersion {
			return status.Errorf(codes.Aborted, "sandbox %s changed (resource version %d, expected %d); read it again and retry", req.GetSandboxName(), r.obj.ResourceVersion, rv)
		}
		if slices.Contains(r.sb.GetSpec().GetProviders(), name) {
			return errNoChange
		}
		if r.sb.Spec == nil {
			r.sb.Spec = &openshellv1.SandboxSpec{}
		}
		r.sb.Spec.Providers = append(r.sb.Spec.Providers, name)
		attached = true
		return nil
	})
	if err != nil {
		return nil, err
	}
	if attached {
		// A DeleteProvider that marked the provider before this attach was stored may
		// have found no users: undo rather than keep a sandbox naming a deleted provider.
		if err := s.checkProviders(ctx, []string{name}); err != nil {
			if _, uerr := s.detach(context.WithoutCancel(ctx), cur.id(), name, nil); uerr != nil {
				s.log.Error("attach of a provider being deleted not undone", "sandbox_id", cur.id(), "provider", name, "err", uerr)
			}
			return nil, err
		}
		s.log.Info("provider attached", "sandbox_id", cur.id(), "provider", name)
		s.gatewayLog(cur.id(), "INFO", fmt.Sprintf("provider %s attached; the supervisor loads it at its next start", name))
	}
	return &openshellv1.AttachSandboxProviderResponse{Sandbox: s.view(r), Attached: attached}, nil
}

// DetachSandboxProvider removes a provider from a sandbox (effective at the
// supervisor's next start, like attach).
func (s *Server) DetachSandboxProvider(ctx context.Context, req *openshellv1.DetachSandboxProviderRequest) (*openshellv1.DetachSandboxProviderResponse, error) {
	if req.GetProviderName() == "" {
		return nil, invalidf("provider_name is required")
	}
	cur, err := s.loadByName(ctx, req.GetWorkspace(), req.GetSandboxName())
	if err != nil {
		return nil, err
	}
	r, err := s.detach(ctx, cur.id(), req.GetProviderName(), func(r *record) error {
		// Checked inside the update, so a change landing after the read above is seen.
		if rv := req.GetExpectedResourceVersion(); rv != 0 && rv != r.obj.ResourceVersion {
			return status.Errorf(codes.Aborted, "sandbox %s changed (resource version %d, expected %d); read it again and retry", req.GetSandboxName(), r.obj.ResourceVersion, rv)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	detached := !slices.Contains(r.sb.GetSpec().GetProviders(), req.GetProviderName()) && slices.Contains(cur.sb.GetSpec().GetProviders(), req.GetProviderName())
	if detached {
		s.log.Info("provider detached", "sandbox_id", cur.id(), "provider", req.GetProviderName())
		s.gatewayLog(cur.id(), "INFO", fmt.Sprintf("provider %s detached; the supervisor drops it at its next start", req.GetProviderName()))
	}
	return &openshellv1.DetachSandboxProviderResponse{Sandbox: s.view(r), Detached: detached}, nil
}

// detach removes provider name from the sandbox's spec; check, if set, may refuse
// the update on the record about to be changed.
func (s *Server) detach(ctx context.Context, id, name string, check func(*record) error) (*record, error) {
	return s.mutate(ctx, id, func(r *record) error {
		if check != nil {
			if err := check(r); err != nil {
				return err
			}
		}
		i := slices.Index(r.sb.GetSpec().GetProviders(), name)
		if i < 0 {
			return errNoChange
		}
		r.sb.Spec.Providers = slices.Delete(r.sb.Spec.Providers, i, i+1)
		return nil
	})
}

// RunnerKeyer is a driver whose sandboxes run in VMs with a host-side runner that
// holds the provider credentials (driversel's VM driver process). RunnerKey is the
// key runner credentials are derived from (package hostcred).
type RunnerKeyer interface {
	RunnerKey() []byte
}

// checkRunner admits a caller of GetSandboxProviderEnvironment asking for real values for sandbox id. Containers get the
// values in their root supervisor (nothing to check beyond the token). A VM guest
// holds the same sandbox token as its runner, so the runner also shows a credential
// derived from the driver's runner key that never enters the guest; without a valid
// one the answer is PERMISSION_DENIED, also when the VM driver is attached without a
// key (its runners then get no values: a missing credential, never a leaked one).
func (s *Server) checkRunner(ctx context.Context, id string) error {
	var key []byte
	if rk, ok := s.drv.(RunnerKeyer); ok {
		key = rk.RunnerKey()
	}
	if key == nil && s.caps.GetDriverName() != "vm" {
		return nil
	}
	var cred string
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(hostcred.MetadataKey); len(v) == 1 {
			cred = v[0]
		}
	}
	if key == nil {
		return status.Errorf(codes.PermissionDenied, "sandbox %s runs in a VM and this gateway has no runner key for its driver: provider credentials are given only to the VM's runner on the host; let the gateway start the VM driver (--drivers vm) rather than attaching it", id)
	}
	if !hostcred.Verify(key, id, cred) {
		s.log.Warn("provider credentials of a VM sandbox asked for without a valid runner credential (from inside the guest?)", "sandbox_id", id, "credential_present", cred != "")
		return status.Errorf(codes.PermissionDenied, "sandbox %s runs in a VM: its provider credentials are given only to the VM's runner on the host (the guest receives placeholders from the runner)", id)
	}
	return nil
}

// providerDeletingLabel marks a provider whose DeleteProvider is checking for users.
const providerDeletingLabel = "openshell.io/deleting"

// checkProviders refuses a create that names providers that do not exist or are
// being deleted.
func (s *Server) checkProviders(ctx context.Context, names []string) error {
	for _, n := range names {
		obj, err := s.st.GetByName(ctx, kindProvider, providerWorkspace, n)
		if errors.Is(err, store.ErrNotFound) {
			return status.Errorf(codes.FailedPrecondition, "provider %q does not exist; create it first with `openshell provider create --name %s --type TYPE --credential KEY`", n, n)
		}
		if err != nil {
			return err
		}
		if obj.Labels[providerDeletingLabel] != "" {
			return status.Errorf(codes.FailedPrecondition, "provider %q is being deleted; create it again, or retry if the delete fails", n)
		}
	}
	return nil
}

func (s *Server) sandboxesUsingProvider(ctx context.Context, name string) ([]string, error) {
	objs, err := s.st.List(ctx, kindSandbox, store.ListOptions{AllWorkspaces: true})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, o := range objs {
		r, err := decodeRecord(o)
		if err != nil {
			return nil, err
		}
		if slices.Contains(r.sb.GetSpec().GetProviders(), name) {
			out = append(out, fmt.Sprintf("%q (workspace %s)", o.Name, o.Workspace))
		}
	}
	return out, nil
}

func (s *Server) loadProvider(ctx context.Context, name string) (*store.Object, *datamodelv1.Provider, error) {
	if name == "" {
		return nil, nil, invalidf("provider name is required")
	}
	obj, err := s.st.GetByName(ctx, kindProvider, providerWorkspace, name)
	if err != nil {
		return nil, nil, providerNotFound(name, err)
	}
	p, err := s.openProvider(obj)
	if err != nil {
		return nil, nil, err
	}
	return obj, p, nil
}

func (s *Server) openProvider(o *store.Object) (*datamodelv1.Provider, error) {
	if s.opts.Secrets == nil {
		return nil, errSecretsAbsent
	}
	plain, err := s.opts.Secrets.Open(o.Data, providerAD(o.ID))
	if err != nil {
		return nil, status.Errorf(codes.DataLoss, "provider %s: %v", o.Name, err)
	}
	if isLegacyProvider(plain) {
		p, err := decodeLegacyProvider(plain)
		if err != nil {
			return nil, status.Errorf(codes.DataLoss, "provider %s: stored credentials (earlier format) are corrupt: %v", o.Name, err)
		}
		return p, nil
	}
	p := &datamodelv1.Provider{}
	if err := proto.Unmarshal(plain, p); err != nil {
		return nil, status.Errorf(codes.DataLoss, "provider %s: stored credentials are corrupt: %v", o.Name, err)
	}
	return p, nil
}

func providerNotFound(name string, err error) error {
	if errors.Is(err, store.ErrNotFound) {
		return status.Errorf(codes.NotFound, "provider %q does not exist (see `openshell provider list`)", name)
	}
	return err
}

// providerView is the user-facing Provider: credential keys with empty values, never
// the values themselves.
func providerView(o *store.Object, p *datamodelv1.Provider) *datamodelv1.Provider {
	creds := make(map[string]string, len(p.GetCredentials()))
	for k := range p.GetCredentials() {
		creds[k] = ""
	}
	return &datamodelv1.Provider{
		Metadata: &datamodelv1.ObjectMeta{Id: o.ID, Name: o.Name, CreatedAtMs: o.CreatedAtMs,
			ResourceVersion: o.ResourceVersion, Labels: maps.Clone(o.Labels), Workspace: o.Workspace},
		Type: p.GetType(), Credentials: creds, Config: maps.Clone(p.GetConfig()),
		CredentialExpiresAtMs: maps.Clone(p.GetCredentialExpiresAtMs()),
	}
}
