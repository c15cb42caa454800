package gateway

import (
	"context"
	"fmt"

	"github.com/openshell/openshell/drivers"
)

// stopWorkload stops a sandbox's workload, or suspends it (memory saved, nothing
// left running; StartSandbox resumes it) where the driver can.
func (s *Server) stopWorkload(ctx context.Context, id, name string, suspend bool) error {
	if !suspend {
		return s.drv.Stop(ctx, id, name)
	}
	sus, ok := s.drv.(drivers.Suspender)
	if !ok {
		return fmt.Errorf("the %s driver cannot suspend sandboxes (the vm driver can, on a backend that saves VMs): stop %s without --suspend: %w",
			s.opts.DriverName, name, drivers.ErrFailedPrecondition)
	}
	return sus.Suspend(ctx, id, name)
}
