//go:build !linux

package supervisor

import (
	"log/slog"

	"github.com/openshell/openshell/supervisor/bootstrap"
	"github.com/openshell/openshell/supervisor/sandboxuser"
)

// hideTokenFile: the supervisor runs sandboxes on Linux only; elsewhere (builds of
// the package for tests and tools) there is nothing to hide.
func hideTokenFile(*bootstrap.Config, *sandboxuser.User, string, *slog.Logger) error { return nil }
