package driversel

import (
	"context"
	"path/filepath"

	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/docker"
)

func init() { Register("docker", newDocker) }

// newDocker builds the Docker driver from the gateway environment plus the
// `[drivers.docker]` table (table keys override the gateway-derived values).
func newDocker(ctx context.Context, env DriverEnv) (drivers.Driver, error) {
	cfg := docker.Config{
		SupervisorBinary: env.SupervisorBinary,
		GatewayEndpoint:  env.GatewayEndpoint,
		GatewayPort:      env.GatewayPort,
		// The gateway opens the listeners its driver asks for (ListenerRequirements).
		GatewayServesBridge: true,
		CAPEM:               env.CAPEM,
		StateDir:            filepath.Join(env.StateDir, "docker-driver"),
	}
	if env.EngineSocket != "" {
		cfg.Host = "unix://" + env.EngineSocket
	}
	if env.GatewaySockets {
		// Sandboxes dial their own socket: nothing on the bridge, no forwarder.
		cfg.GatewayServesBridge, cfg.GatewayPort = false, 0
	}
	if err := env.Decode(&cfg); err != nil {
		return nil, err
	}
	if cfg.SupervisorBinary == "" {
		cfg.SupervisorBinary = env.SupervisorBinary
	}
	return docker.New(ctx, cfg)
}
