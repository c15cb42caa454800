package drivers

import (
	"context"

	"github.com/openshell/openshell/api/snapshotv1"
)

// Snapshotter is implemented by drivers that can snapshot a running sandbox (its
// memory, devices and writable disk, taken while it is paused for a moment; it then
// runs on) and start new sandboxes from a snapshot (DriverSandboxSpec.from_snapshot).
// Snapshots are the driver's files: they outlive driver and gateway restarts.
//
// Errors: ErrNotFound (no such sandbox or snapshot), ErrAlreadyExists (the name is
// taken), ErrInvalidArgument (a bad name), ErrFailedPrecondition (the sandbox is not
// running, or its backend or devices cannot be saved).
type Snapshotter interface {
	SaveSnapshot(ctx context.Context, req *snapshotv1.SaveSnapshotRequest) (*snapshotv1.Snapshot, error)
	ListSnapshots(ctx context.Context) ([]*snapshotv1.Snapshot, error)
	// DeleteSnapshot removes a snapshot's files and reports the bytes freed.
	DeleteSnapshot(ctx context.Context, name string) (freed int64, err error)
}
