//go:build !darwin

// Package vz is the macOS Virtualization.framework backend; on other systems New
// returns vmm.ErrNotSupported.
package vz

import (
	"fmt"

	"github.com/openshell/openshell/vmm"
)

// New returns vmm.ErrNotSupported: Virtualization.framework exists only on macOS.
func New(cfg vmm.Config, opts ...Option) (vmm.Machine, error) {
	return nil, fmt.Errorf("vm %s: vz backend needs macOS: %w", cfg.Name, vmm.ErrNotSupported)
}

// Available: Virtualization.framework exists only on macOS.
func Available() error {
	return fmt.Errorf("vz: Virtualization.framework needs macOS: %w", vmm.ErrNotSupported)
}
