package podman

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/containers"
)

// Errors from the libpod API are mapped onto the drivers sentinels here, once, and
// keep the service's message and the original error (both are wrapped).

// isServiceDown reports errors that mean the service cannot be reached at all.
func isServiceDown(err error) bool {
	var ae *apiError
	if errors.As(err, &ae) {
		return false
	}
	return containers.Unreachable(err)
}

// unavailable builds the error for a service that does not answer.
func (d *Driver) unavailable(err error) error {
	return fmt.Errorf("podman driver: the Podman service at %s does not answer (%w: %w); start it (podman system service --time=0 unix://%s, or scripts/setup-podman.sh), or point CONTAINER_HOST / the driver's socket setting at a running service",
		d.cfg.Socket, drivers.ErrUnavailable, err, d.cfg.Socket)
}

// wrap maps a libpod API error to a sentinel, naming what we were doing.
func (d *Driver) wrap(err error, what string) error {
	switch st := statusOf(err); {
	case err == nil:
		return nil
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("podman driver: %s: %w", what, err)
	case isServiceDown(err):
		return fmt.Errorf("podman driver: %s: %w", what, d.unavailable(err))
	case st == http.StatusNotFound:
		return fmt.Errorf("podman driver: %s: %w: %w", what, drivers.ErrNotFound, err)
	case st == http.StatusConflict:
		return fmt.Errorf("podman driver: %s: %w: %w", what, drivers.ErrFailedPrecondition, err)
	case st == http.StatusBadRequest:
		return fmt.Errorf("podman driver: %s: %w: %w", what, drivers.ErrInvalidArgument, err)
	default:
		return fmt.Errorf("podman driver: %s: %w", what, err)
	}
}
