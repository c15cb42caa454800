//go:build darwin

// Package vz is the macOS Virtualization.framework backend. Not implemented yet:
// New returns vmm.ErrNotSupported on every platform.
package vz

import (
	"fmt"

	"github.com/openshell/openshell/vmm"
)

// New returns vmm.ErrNotSupported until the Virtualization.framework backend lands.
func New(cfg vmm.Config, opts ...Option) (vmm.Machine, error) {
	return nil, fmt.Errorf("vm %s: vz backend not implemented yet: %w", cfg.Name, vmm.ErrNotSupported)
}
