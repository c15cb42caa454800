// Package gatewayconfig reads the gateway-wide settings a client checks before it
// creates a sandbox (GetGatewayConfig), as upstream's CLI does. A gateway that does
// not implement the RPC has no settings.
package gatewayconfig

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/api/sandboxv1"
)

// Read returns the gateway's settings (never nil). UNIMPLEMENTED (an older gateway)
// is an empty map, not an error; any other failure is returned with its message.
func Read(ctx context.Context, c pb.OpenShellClient) (map[string]*sandboxv1.SettingValue, error) {
	resp, err := c.GetGatewayConfig(ctx, &sandboxv1.GetGatewayConfigRequest{})
	if status.Code(err) == codes.Unimplemented {
		return map[string]*sandboxv1.SettingValue{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the gateway's settings: %s", status.Convert(err).Message())
	}
	if resp.GetSettings() == nil {
		return map[string]*sandboxv1.SettingValue{}, nil
	}
	return resp.GetSettings(), nil
}
