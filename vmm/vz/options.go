package vz

// Option configures New (none yet).
type Option func(*options)

type options struct{}
