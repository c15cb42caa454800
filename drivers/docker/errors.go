package docker

import (
	"context"
	"errors"
	"fmt"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"

	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/containers"
)

// Errors from the Docker API are mapped onto the drivers sentinels here, once, and
// keep the daemon's message and the original error (both are wrapped).

func isNotFound(err error) bool { return cerrdefs.IsNotFound(err) }
func isConflict(err error) bool { return cerrdefs.IsConflict(err) }

// isDaemonDown reports errors that mean the daemon cannot be reached at all.
func isDaemonDown(err error) bool {
	return client.IsErrConnectionFailed(err) || cerrdefs.IsUnavailable(err) || containers.Unreachable(err)
}

// unavailable builds the error for a daemon that does not answer.
func (d *Driver) unavailable(err error) error {
	return fmt.Errorf("docker driver: the Docker daemon at %s does not answer (%w: %w); start it with scripts/setup-docker.sh (or `dockerd`), or point DOCKER_HOST / the driver's host setting at a running daemon",
		d.cfg.Host, drivers.ErrUnavailable, err)
}

// wrap maps a Docker API error to a sentinel, naming what we were doing.
func (d *Driver) wrap(err error, what string) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("docker driver: %s: %w", what, err)
	case isDaemonDown(err):
		return fmt.Errorf("docker driver: %s: %w", what, d.unavailable(err))
	case cerrdefs.IsNotFound(err):
		return fmt.Errorf("docker driver: %s: %w: %w", what, drivers.ErrNotFound, err)
	case cerrdefs.IsConflict(err):
		return fmt.Errorf("docker driver: %s: %w: %w", what, drivers.ErrAlreadyExists, err)
	case cerrdefs.IsInvalidArgument(err):
		return fmt.Errorf("docker driver: %s: %w: %w", what, drivers.ErrInvalidArgument, err)
	case cerrdefs.IsFailedPrecondition(err), cerrdefs.IsNotModified(err):
		return fmt.Errorf("docker driver: %s: %w: %w", what, drivers.ErrFailedPrecondition, err)
	case strings.Contains(err.Error(), "Cannot connect to the Docker daemon"):
		return fmt.Errorf("docker driver: %s: %w", what, d.unavailable(err))
	default:
		return fmt.Errorf("docker driver: %s: %w", what, err)
	}
}
