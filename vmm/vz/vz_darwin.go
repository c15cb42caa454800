//go:build darwin

package vz

import (
	"fmt"

	"github.com/openshell/openshell/vmm"
)

// New returns vmm.ErrNotSupported until the Virtualization.framework backend lands.
func New(cfg vmm.Config, opts ...Option) (vmm.Machine, error) {
	return nil, fmt.Errorf("vm %s: vz backend not implemented yet: %w", cfg.Name, vmm.ErrNotSupported)
}

// Available reports whether this Mac can run the backend.
func Available() error { return fmt.Errorf("vz backend not implemented yet: %w", vmm.ErrNotSupported) }
