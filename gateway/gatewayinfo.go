package gateway

import (
	"context"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/api/sandboxv1"
	"github.com/openshell/openshell/gateway/auth"
)

// GetGatewayConfig returns the gateway-wide settings. This gateway has none (sandbox
// policy is per sandbox), so the map is empty; clients read it before creating a
// sandbox, as upstream's CLI does, and must treat missing keys as defaults.
func (s *Server) GetGatewayConfig(context.Context, *sandboxv1.GetGatewayConfigRequest) (*sandboxv1.GetGatewayConfigResponse, error) {
	return &sandboxv1.GetGatewayConfigResponse{Settings: map[string]*sandboxv1.SettingValue{}}, nil
}

// GetGatewayInfo reports the version and the compute driver this gateway runs.
func (s *Server) GetGatewayInfo(context.Context, *openshellv1.GetGatewayInfoRequest) (*openshellv1.GetGatewayInfoResponse, error) {
	return &openshellv1.GetGatewayInfoResponse{
		Status:         openshellv1.ServiceStatus_SERVICE_STATUS_HEALTHY,
		GatewayVersion: Version,
		ComputeDrivers: []*openshellv1.ComputeDriverInfo{{
			Name: s.opts.DriverName,
			Capabilities: &openshellv1.ComputeDriverCapabilities{
				DriverName: s.caps.GetDriverName(), DriverVersion: s.caps.GetDriverVersion()},
		}},
	}, nil
}

// GetCurrentUser names the caller as the gateway authenticated it (certificate
// common name, or local-dev on a local socket). This gateway has no roles or scopes
// beyond "may call user RPCs", so roles and scopes are empty.
func (s *Server) GetCurrentUser(ctx context.Context, _ *openshellv1.GetCurrentUserRequest) (*openshellv1.GetCurrentUserResponse, error) {
	p := auth.FromContext(ctx)
	idp := "mtls"
	if p.Name == "local-dev" {
		idp = "local"
	}
	return &openshellv1.GetCurrentUserResponse{Subject: p.Name, DisplayName: p.Name, IdentityProvider: idp}, nil
}
