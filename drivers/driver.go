// Package drivers defines the compute-driver contract (the Go face of
// openshell.compute.v1.ComputeDriver), the error sentinels every driver
// returns, and the condition vocabulary the gateway derives sandbox phases
// from. Concrete drivers live in sub-packages; this package imports none.
package drivers

import (
	"context"

	"github.com/openshell/openshell/api/computev1"
)

// Driver is the compute contract (openshell.compute.v1.ComputeDriver) as a Go interface.
//
// Sandboxes are keyed by the gateway-assigned id; name is the runtime name and
// is passed along so drivers that address workloads by name need no lookup.
// Implementations must be safe for concurrent use by several goroutines
// working on different sandboxes. Errors wrap the sentinels in errors.go.
type Driver interface {
	// Capabilities reports the driver's name, version and default image.
	Capabilities(ctx context.Context) (*computev1.GetCapabilitiesResponse, error)
	// ValidateCreate checks a create request without side effects
	// (ErrInvalidArgument, ErrFailedPrecondition, ...).
	ValidateCreate(ctx context.Context, sb *computev1.DriverSandbox) error
	// Create starts provisioning and returns without waiting for readiness;
	// progress is reported through Watch/Get. ErrAlreadyExists for a known id.
	Create(ctx context.Context, sb *computev1.DriverSandbox) error
	// Get returns the current observation; ErrNotFound when unknown.
	Get(ctx context.Context, id, name string) (*computev1.DriverSandbox, error) // ErrNotFound
	// List returns every sandbox the driver manages (for reconciliation).
	List(ctx context.Context) ([]*computev1.DriverSandbox, error)
	// Stop stops a sandbox, keeping its state; it then reports Suspended=True.
	Stop(ctx context.Context, id, name string) error
	// Start restarts a stopped sandbox.
	Start(ctx context.Context, id, name string) error
	// Delete removes a sandbox; deleted is false (and err nil) when there was
	// nothing to remove.
	Delete(ctx context.Context, id, name string) (deleted bool, err error)
	// Watch streams events until ctx ends; the channel is closed when the watch ends.
	Watch(ctx context.Context) (<-chan *computev1.WatchSandboxesEvent, error)
	// Close releases the driver's resources (not its sandboxes).
	Close() error
}

// Optional abilities, found by type assertion:

// ListenerRequirer is implemented by drivers whose sandboxes need the gateway
// to listen on a particular address (e.g. not only loopback).
type ListenerRequirer interface {
	ListenerRequirements(ctx context.Context) ([]*computev1.GatewayListenerRequirement, error)
}

// Suspender is implemented by drivers that can suspend a running sandbox: its memory
// is saved, nothing of it keeps running, and Start resumes it where it was. A sandbox
// that cannot be (its backend or devices) is refused with ErrFailedPrecondition.
type Suspender interface {
	Suspend(ctx context.Context, id, name string) error
}

// WorkspaceManager is implemented by drivers that keep per-workspace
// platform objects (namespaces, networks).
type WorkspaceManager interface {
	EnsureWorkspace(ctx context.Context, ws string) error
	DeleteWorkspace(ctx context.Context, ws string) error
}
