// Package libkrun is the libkrun backend (dlopen'ed C API, one runner process per
// VM). It is not built yet: New returns vmm.ErrNotSupported so callers can fall back
// to QEMU and report why.
package libkrun

import (
	"fmt"

	"github.com/openshell/openshell/vmm"
)

// Option configures New (none yet).
type Option func(*options)

type options struct{}

// New returns vmm.ErrNotSupported: this build has no libkrun backend.
func New(cfg vmm.Config, opts ...Option) (vmm.Machine, error) {
	return nil, fmt.Errorf("vm %s: libkrun: %w", cfg.Name, vmm.ErrNotSupported)
}
