package drivers

import (
	"context"

	"github.com/openshell/openshell/api/poolv1"
)

// Pooler is implemented by drivers with warm pools: sandboxes of one shape booted
// ahead of time, handed to creates of that shape. Pools come from the driver's
// configuration or from CreatePool; the latter are kept by the driver until
// DeletePool, across restarts.
//
// Errors: ErrInvalidArgument (a bad field, named), ErrAlreadyExists (the name is
// taken), ErrNotFound (no such pool), ErrFailedPrecondition (a pool of the
// configuration, which only the configuration changes).
type Pooler interface {
	CreatePool(ctx context.Context, req *poolv1.CreatePoolRequest) (*poolv1.Pool, error)
	ListPools(ctx context.Context) ([]*poolv1.Pool, error)
	// DeletePool removes a pool and stops its VMs that no sandbox took; it reports
	// how many it stopped.
	DeletePool(ctx context.Context, name string) (stopped int, err error)
}
