package vm

// Suspend: the runner saves the VM's memory and device state next to the writable
// disk and ends the VM; the sandbox is then stopped with nothing running (no QEMU, no
// runner), and Start brings the same guest back where it was (see runner/suspend.go).

import (
	"context"
	"errors"
	"fmt"

	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/vm/internal/runner"
	"github.com/openshell/openshell/drivers/vm/internal/state"
)

var _ drivers.Suspender = (*Driver)(nil)

// msgSuspended is the stopped sandbox's message while its memory is saved.
const msgSuspended = "suspended: memory and devices saved to disk, nothing running; start resumes it where it was"

// stoppedMessage says whether a stopped sandbox is suspended.
func stoppedMessage(dir string) string {
	if runner.Suspended(dir) {
		return msgSuspended
	}
	return "stopped"
}

// Suspend implements drivers.Suspender: the running VM is saved and ended.
func (d *Driver) Suspend(ctx context.Context, id, _ string) error {
	s, ph, exited, unlock, err := d.beginOp(id)
	if err != nil {
		return err
	}
	defer unlock()
	switch ph {
	case phaseRunning:
	case phaseStopped:
		if runner.Suspended(s.paths.Dir) {
			return nil
		}
		return fmt.Errorf("vm sandbox %q is stopped, not running: start it, then suspend it: %w", id, drivers.ErrFailedPrecondition)
	case phaseProvisioning, phaseBooting:
		return fmt.Errorf("vm sandbox %q is still starting: suspend it once it is ready: %w", id, drivers.ErrFailedPrecondition)
	case phaseDeleting:
		return fmt.Errorf("vm sandbox %q is being deleted: %w", id, drivers.ErrFailedPrecondition)
	default:
		return fmt.Errorf("vm sandbox %q is not running (%s): only a running sandbox can be suspended: %w", id, s.reason, drivers.ErrFailedPrecondition)
	}
	d.log.Info("suspending VM sandbox", "sandbox_id", id)
	if err := runner.NewClient(s.paths.ControlSocket).Suspend(ctx); err != nil {
		var se *runner.SuspendError
		if errors.As(err, &se) && se.CannotSave {
			return fmt.Errorf("vm sandbox %q cannot be suspended: %s: %w", id, se.Msg, drivers.ErrFailedPrecondition)
		}
		return fmt.Errorf("vm sandbox %q: suspend (the VM runs on): %w", id, err)
	}
	select {
	case <-exited:
	case <-ctx.Done():
		return fmt.Errorf("vm sandbox %q: suspend: waiting for the runner to end: %w", id, ctx.Err())
	}
	if _, err := state.Update(s.paths.Dir, func(r *state.Record) error { r.Stopped = true; return nil }); err != nil {
		return fmt.Errorf("vm sandbox %q: %w", id, err)
	}
	s.mu.Lock()
	if s.phase == phaseDeleting {
		s.mu.Unlock()
		return nil
	}
	s.setPhase(phaseStopped, drivers.ReasonContainerStopped, msgSuspended)
	s.mu.Unlock()
	d.emit(s)
	d.log.Info("VM sandbox suspended", "sandbox_id", id)
	return nil
}
