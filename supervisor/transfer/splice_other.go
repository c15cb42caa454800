//go:build !linux

package transfer

import "os"

// splice and spliceFromPipe only move bytes in the kernel on Linux; elsewhere the
// callers copy.
func splice(dst, src *os.File, n int64) (int64, error)         { return 0, errNoSplice }
func spliceFromPipe(dst, src *os.File, n int64) (int64, error) { return 0, errNoSplice }
