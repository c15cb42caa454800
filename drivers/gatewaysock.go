package drivers

import "path"

// The per-sandbox gateway socket: the gateway creates, for each sandbox, a
// host directory (DriverSandboxSpec.gateway_socket_dir) holding a plaintext
// gRPC socket bound to that sandbox. Drivers mount the directory, not the
// socket file, so a socket re-created by a restarted gateway shows up inside
// an existing container.
const (
	// GatewaySocketName is the socket's file name inside the directory.
	GatewaySocketName = "gateway.sock"
	// GatewaySocketMountDir is where container drivers mount the directory.
	GatewaySocketMountDir = "/run/openshell/gateway"
)

// GatewaySocketEndpoint is the supervisor's endpoint for a mounted socket dir.
func GatewaySocketEndpoint() string {
	return "unix://" + path.Join(GatewaySocketMountDir, GatewaySocketName)
}
