//go:build !linux

package images

import (
	"context"
	"fmt"
	"io"
	"runtime"
)

// UnpackLayer needs openat2(RESOLVE_IN_ROOT) to keep untrusted layers inside
// the rootfs; elsewhere it refuses rather than unpack unsafely.
func UnpackLayer(ctx context.Context, root string, r io.Reader) error {
	return unpackLayer(ctx, root, r, 0)
}

func unpackLayer(context.Context, string, io.Reader, int64) error {
	return fmt.Errorf("unpacking image layers on %s: %w (convert images on a Linux host)", runtime.GOOS, ErrNotSupported)
}
