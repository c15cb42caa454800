//go:build !linux || !(amd64 || arm64)

package confine

import "errors"

// ErrNotSupported is returned where confinement is not implemented.
var ErrNotSupported = errors.New("confine: not supported on this platform (Linux amd64/arm64 only)")

// Apply is not supported here.
func Apply(Spec) (Result, error) { return Result{}, ErrNotSupported }
