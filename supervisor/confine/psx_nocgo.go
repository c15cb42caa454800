//go:build linux && !cgo && (amd64 || arm64)

package confine

// psxListsTasks: without cgo the all-threads system calls are the Go runtime's,
// which reads nothing (see psx_cgo.go).
const psxListsTasks = false
