//go:build !linux

package egress

func socketHolders(proc, link string) ([]int, error) { return scanHolders(proc, link) }
