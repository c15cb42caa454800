package gateway

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/gateway/auth"
)

// IssueSandboxToken mints a fresh token for the calling sandbox (the auth mode admits
// only sandbox tokens, so a sandbox can only ever get a token for itself).
func (s *Server) IssueSandboxToken(ctx context.Context, _ *openshellv1.IssueSandboxTokenRequest) (*openshellv1.IssueSandboxTokenResponse, error) {
	tok, exp, err := s.mintForCaller(ctx)
	if err != nil {
		return nil, err
	}
	return &openshellv1.IssueSandboxTokenResponse{Token: tok, ExpiresAtMs: exp}, nil
}

// RefreshSandboxToken is IssueSandboxToken for a supervisor replacing its token
// before it expires. Extension service credentials are refused by name: this gateway
// has no extension services.
func (s *Server) RefreshSandboxToken(ctx context.Context, req *openshellv1.RefreshSandboxTokenRequest) (*openshellv1.RefreshSandboxTokenResponse, error) {
	if n := req.GetExtensionServiceNames(); len(n) > 0 {
		return nil, status.Errorf(codes.NotFound, "extension_service_names %v: this gateway has no extension services; send the request without them", n)
	}
	tok, exp, err := s.mintForCaller(ctx)
	if err != nil {
		return nil, err
	}
	return &openshellv1.RefreshSandboxTokenResponse{Token: tok, ExpiresAtMs: exp}, nil
}

func (s *Server) mintForCaller(ctx context.Context) (string, int64, error) {
	p := auth.FromContext(ctx)
	if p.Kind != auth.SandboxKind || p.SandboxID == "" {
		return "", 0, status.Error(codes.PermissionDenied, "sandbox tokens are issued only to a sandbox's own supervisor (call with its current token)")
	}
	// A deleted sandbox's supervisor gets nothing new.
	if _, err := s.load(ctx, p.SandboxID); err != nil {
		return "", 0, err
	}
	now := time.Now()
	tok, err := s.opts.Tokens.Mint(p.SandboxID, s.opts.TokenTTL)
	if err != nil {
		return "", 0, fmt.Errorf("sandbox %s: mint token: %w", p.SandboxID, err)
	}
	return tok, now.Add(s.opts.TokenTTL).UnixMilli(), nil
}
