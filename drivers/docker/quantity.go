package docker

import "github.com/openshell/openshell/drivers"

// The quantity parsers are shared with the other container drivers.
func parseCPU(s string) (int64, error)    { return drivers.ParseCPU(s) }
func parseMemory(s string) (int64, error) { return drivers.ParseMemory(s) }
