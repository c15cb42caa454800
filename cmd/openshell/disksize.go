package main

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/openshell/openshell/api/openshellv1"
)

// vmDriverName is the compute driver that sizes a sandbox's writable disk.
const vmDriverName = "vm"

// diskSizeDriverConfigKey is the key of the vm driver's driver_config that sizes its
// writable disk (its object only: the gateway hands each driver its own).
const diskSizeDriverConfigKey = "disk_size"

// applyDiskSize puts --disk-size into the vm driver's driver_config. The driver checks
// the size (at least 64Mi, a quantity like 20Gi). A sandbox made from a snapshot keeps
// the snapshot's disk.
func applyDiskSize(spec *openshellv1.SandboxSpec, size, fromSnapshot string) error {
	if size == "" {
		return nil
	}
	if fromSnapshot != "" {
		return errors.New("--disk-size with --from-snapshot: a sandbox made from a snapshot keeps the snapshot's disk; drop --disk-size")
	}
	setDriverConfig(spec, vmDriverName, diskSizeDriverConfigKey, structpb.NewStringValue(size))
	return nil
}

// requireDriver refuses flag unless the gateway runs driver: a flag only one driver
// reads would otherwise be dropped without a word by the others.
func (a *app) requireDriver(ctx context.Context, flag, driver string) error {
	_, got, err := a.health(ctx)
	if err != nil {
		return fmt.Errorf("%s: asking the gateway which driver it uses: %w", flag, err)
	}
	if got != driver {
		return fmt.Errorf("%s: the gateway's driver is %q; only the %s driver takes it", flag, got, driver)
	}
	return nil
}
