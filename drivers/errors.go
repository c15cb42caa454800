package drivers

import "errors"

// Error sentinels shared by every driver and by the gRPC adapter, which maps
// them to gRPC codes and back so errors.Is works across the wire. Wrap them
// with the sandbox id and the fix, e.g.
//
//	fmt.Errorf("sandbox %s: %w", id, drivers.ErrNotFound)
var (
	// ErrNotFound: no such sandbox (gRPC NOT_FOUND).
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: a sandbox with that id exists (gRPC ALREADY_EXISTS).
	ErrAlreadyExists = errors.New("already exists")
	// ErrInvalidArgument: the request itself is wrong (gRPC INVALID_ARGUMENT).
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrUnavailable: the backend cannot be reached right now; retrying may
	// help (gRPC UNAVAILABLE).
	ErrUnavailable = errors.New("unavailable")
	// ErrFailedPrecondition: the request is valid but the sandbox or host is
	// not in a state that allows it (gRPC FAILED_PRECONDITION).
	ErrFailedPrecondition = errors.New("failed precondition")
	// ErrNotSupported: this driver (or platform) cannot do that (gRPC UNIMPLEMENTED).
	ErrNotSupported = errors.New("not supported")
)
