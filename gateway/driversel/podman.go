package driversel

import (
	"context"
	"path/filepath"

	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/podman"
)

func init() { Register("podman", newPodman) }

// newPodman builds the Podman driver from the gateway environment plus the
// `[drivers.podman]` table (table keys override the gateway-derived values), e.g.
//
//	[drivers.podman]
//	socket = "/run/user/1000/podman/podman.sock"
//	allow_cgroups_v1 = true
func newPodman(ctx context.Context, env DriverEnv) (drivers.Driver, error) {
	cfg := podman.Config{
		SupervisorBinary: env.SupervisorBinary,
		GatewayEndpoint:  env.GatewayEndpoint,
		GatewayPort:      env.GatewayPort,
		CAPEM:            env.CAPEM,
		StateDir:         filepath.Join(env.StateDir, "podman-driver"),
		Socket:           env.EngineSocket,
	}
	if err := env.Decode(&cfg); err != nil {
		return nil, err
	}
	if cfg.SupervisorBinary == "" {
		cfg.SupervisorBinary = env.SupervisorBinary
	}
	return podman.New(ctx, cfg)
}
