//go:build !linux

package runner

// mayRestoreNice: pools (and their boot priority) are a QEMU-on-Linux feature; other
// hosts leave pooled VMs at normal priority.
func mayRestoreNice() bool { return false }
