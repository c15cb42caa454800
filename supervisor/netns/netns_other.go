//go:build !linux

// Package netns is Linux-only; elsewhere New returns ErrNotSupported.
package netns

import "errors"

// ErrNotSupported is returned on platforms without network namespaces.
var ErrNotSupported = errors.New("netns: network namespaces are Linux-only")
