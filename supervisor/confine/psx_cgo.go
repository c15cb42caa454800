//go:build linux && cgo && (amd64 || arm64)

package confine

// psxListsTasks: with cgo, the library's all-threads system calls go through
// libpsx, which lists /proc/PID/task after each one; a ruleset enforced that way
// must let it, as the library's own RestrictPaths does.
const psxListsTasks = true
