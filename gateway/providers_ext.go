package gateway

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/gateway/auth"
	"github.com/openshell/openshell/gateway/store"
	"github.com/openshell/openshell/internal/hostcred"
	"github.com/openshell/openshell/supervisor/credentials"
)

// Providers are gateway-wide named credential sets. The store row keeps the name in
// the clear (it is unique and listed) and only ciphertext in Data: the sealed
// ProviderCredentials message, bound to the row's id.
const (
	kindProvider      = "provider"
	providerWorkspace = "global"
	maxCredentials    = 64
	maxCredentialSize = 64 << 10
)

var (
	providerNameRE   = regexp.MustCompile(`^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$`)
	credentialKeyRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)
	errSecretsAbsent = status.Error(codes.FailedPrecondition, "this gateway has no secrets key configured, so it cannot store provider credentials (start it with a state directory)")
)

func providerAD(id string) []byte { return []byte(kindProvider + "/" + id) }

func validateProvider(req *openshellv1.CreateProviderRequest) error {
	if !providerNameRE.MatchString(req.GetName()) {
		return invalidf("provider name %q must be 1-63 lowercase letters, digits, '-' or '_', starting and ending with a letter or digit", req.GetName())
	}
	if req.GetType() == "" || len(req.GetType()) > 63 {
		return invalidf("provider %s: type is required (at most 63 characters), e.g. --type github", req.GetName())
	}
	if len(req.GetCredentials()) == 0 {
		return invalidf("provider %s: at least one credential is required (--credential KEY[=VALUE])", req.GetName())
	}
	if len(req.GetCredentials()) > maxCredentials {
		return invalidf("provider %s: %d credentials, at most %d", req.GetName(), len(req.GetCredentials()), maxCredentials)
	}
	for k, v := range req.GetCredentials() {
		if !credentialKeyRE.MatchString(k) {
			return invalidf("provider %s: credential key %q must look like an environment variable name (letters, digits, '_', not starting with a digit)", req.GetName(), k)
		}
		if len(v) > maxCredentialSize {
			return invalidf("provider %s: credential %s is %d bytes, at most %d", req.GetName(), k, len(v), maxCredentialSize)
		}
	}
	for i, h := range req.GetHosts() {
		if h == "" || len(h) > 253 {
			return invalidf("provider %s: hosts[%d] %q must be a host name or pattern of 1-253 characters", req.GetName(), i, h)
		}
	}
	// Where the credentials may go (wildcards only when asked for, header names).
	b := credentials.Provider{Name: req.GetName(), Hosts: req.GetHosts(), Headers: req.GetHeaders(), AllowWildcardHosts: req.GetAllowWildcardHosts()}
	if err := b.ValidateBinding(); err != nil {
		return invalidf("%s", strings.TrimPrefix(err.Error(), "credentials: "))
	}
	return nil
}

func (x *extServer) CreateProvider(ctx context.Context, req *openshellv1.CreateProviderRequest) (*openshellv1.Provider, error) {
	s := x.s
	if s.opts.Secrets == nil {
		return nil, errSecretsAbsent
	}
	if err := validateProvider(req); err != nil {
		return nil, err
	}
	id := uuid.NewString()
	pc := &openshellv1.ProviderCredentials{Name: req.GetName(), Type: req.GetType(),
		Credentials: maps.Clone(req.GetCredentials()), Hosts: slices.Clone(req.GetHosts()),
		Headers: slices.Clone(req.GetHeaders()), AllowWildcardHosts: req.GetAllowWildcardHosts()}
	plain, err := proto.MarshalOptions{Deterministic: true}.Marshal(pc)
	if err != nil {
		return nil, err
	}
	sealed, err := s.opts.Secrets.Seal(plain, providerAD(id))
	if err != nil {
		return nil, fmt.Errorf("provider %s: %w", req.GetName(), err)
	}
	obj, err := s.st.Create(ctx, &store.Object{Kind: kindProvider, ID: id, Workspace: providerWorkspace, Name: req.GetName(), Data: sealed})
	if errors.Is(err, store.ErrAlreadyExists) {
		return nil, fmt.Errorf("provider %q already exists; delete it first (`openshell provider delete %s`) to replace it: %w", req.GetName(), req.GetName(), err)
	}
	if err != nil {
		return nil, err
	}
	s.log.Info("provider created", "provider", req.GetName(), "type", req.GetType(), "keys", len(pc.Credentials))
	return providerView(obj, pc), nil
}

func (x *extServer) GetProvider(ctx context.Context, req *openshellv1.GetProviderRequest) (*openshellv1.Provider, error) {
	obj, pc, err := x.s.loadProvider(ctx, req.GetName())
	if err != nil {
		return nil, err
	}
	return providerView(obj, pc), nil
}

func (x *extServer) ListProviders(ctx context.Context, _ *openshellv1.ListProvidersRequest) (*openshellv1.ListProvidersResponse, error) {
	s := x.s
	objs, err := s.st.List(ctx, kindProvider, store.ListOptions{Workspace: providerWorkspace})
	if err != nil {
		return nil, err
	}
	resp := &openshellv1.ListProvidersResponse{}
	for _, o := range objs {
		pc, err := s.openProvider(o)
		if err != nil {
			return nil, err
		}
		resp.Providers = append(resp.Providers, providerView(o, pc))
	}
	slices.SortFunc(resp.Providers, func(a, b *openshellv1.Provider) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return resp, nil
}

func (x *extServer) DeleteProvider(ctx context.Context, req *openshellv1.DeleteProviderRequest) (*openshellv1.DeleteProviderResponse, error) {
	s := x.s
	if req.GetName() == "" {
		return nil, invalidf("provider name is required")
	}
	obj, err := s.st.GetByName(ctx, kindProvider, providerWorkspace, req.GetName())
	if err != nil {
		return nil, providerNotFound(req.GetName(), err)
	}
	// Two phases against a concurrent CreateSandbox naming this provider: mark the
	// provider as being deleted, then look for users. A create stores its sandbox
	// first and then checks its providers (checkProvidersStill), so one of the two
	// always sees the other: the create fails, or this delete does.
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
		err = status.Errorf(codes.FailedPrecondition, "provider %q is used by sandbox %s; delete the sandbox first", req.GetName(), users[0])
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
	return &openshellv1.DeleteProviderResponse{}, nil
}

// GetSandboxProviders returns the decrypted credentials of the sandbox's providers; the
// auth mode admits only sandbox tokens, and only for their own sandbox. For a VM
// sandbox the real values go only to its runner on the host, never into the guest:
// the caller must also show the runner credential (see checkRunner).
func (x *extServer) GetSandboxProviders(ctx context.Context, req *openshellv1.GetSandboxProvidersRequest) (*openshellv1.GetSandboxProvidersResponse, error) {
	s := x.s
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
	if err := s.checkRunner(ctx, id); err != nil {
		return nil, err
	}
	r, err := s.load(ctx, id)
	if err != nil {
		return nil, err
	}
	resp := &openshellv1.GetSandboxProvidersResponse{}
	for _, name := range r.sb.GetSpec().GetProviders() {
		_, pc, err := s.loadProvider(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("sandbox %s: provider %s: %w", id, name, err)
		}
		resp.Providers = append(resp.Providers, pc)
	}
	return resp, nil
}

// RunnerKeyer is a driver whose sandboxes run in VMs with a host-side runner that
// holds the provider credentials (driversel's VM driver process). RunnerKey is the
// key runner credentials are derived from (package hostcred).
type RunnerKeyer interface {
	RunnerKey() []byte
}

// checkRunner admits a GetSandboxProviders caller for sandbox id. Containers get the
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

func (s *Server) loadProvider(ctx context.Context, name string) (*store.Object, *openshellv1.ProviderCredentials, error) {
	if name == "" {
		return nil, nil, invalidf("provider name is required")
	}
	obj, err := s.st.GetByName(ctx, kindProvider, providerWorkspace, name)
	if err != nil {
		return nil, nil, providerNotFound(name, err)
	}
	pc, err := s.openProvider(obj)
	if err != nil {
		return nil, nil, err
	}
	return obj, pc, nil
}

func (s *Server) openProvider(o *store.Object) (*openshellv1.ProviderCredentials, error) {
	if s.opts.Secrets == nil {
		return nil, errSecretsAbsent
	}
	plain, err := s.opts.Secrets.Open(o.Data, providerAD(o.ID))
	if err != nil {
		return nil, status.Errorf(codes.DataLoss, "provider %s: %v", o.Name, err)
	}
	pc := &openshellv1.ProviderCredentials{}
	if err := proto.Unmarshal(plain, pc); err != nil {
		return nil, status.Errorf(codes.DataLoss, "provider %s: stored credentials are corrupt: %v", o.Name, err)
	}
	return pc, nil
}

func providerNotFound(name string, err error) error {
	if errors.Is(err, store.ErrNotFound) {
		return status.Errorf(codes.NotFound, "provider %q does not exist (see `openshell provider list`)", name)
	}
	return err
}

// providerView is the user-facing Provider: credential keys only, never values.
func providerView(o *store.Object, pc *openshellv1.ProviderCredentials) *openshellv1.Provider {
	return &openshellv1.Provider{Name: o.Name, Type: pc.GetType(), CredentialKeys: slices.Sorted(maps.Keys(pc.GetCredentials())),
		Hosts: slices.Clone(pc.GetHosts()), CreatedAtMs: o.CreatedAtMs,
		Headers: slices.Clone(pc.GetHeaders()), AllowWildcardHosts: pc.GetAllowWildcardHosts()}
}
