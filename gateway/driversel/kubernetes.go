package driversel

import (
	"context"

	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/kubernetes"
)

func init() { Register("kubernetes", newKubernetes) }

// newKubernetes builds the Kubernetes driver from the `[drivers.kubernetes]` table.
// The supervisor dials the gateway Service, which only the table can name
// (gateway_endpoint); the gateway's CA goes to every sandbox.
func newKubernetes(ctx context.Context, env DriverEnv) (drivers.Driver, error) {
	cfg := kubernetes.Config{CAPEM: env.CAPEM}
	if err := env.Decode(&cfg); err != nil {
		return nil, err
	}
	return kubernetes.New(ctx, cfg)
}
