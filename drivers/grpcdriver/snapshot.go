package grpcdriver

import (
	"context"
	"fmt"

	"google.golang.org/grpc"

	"github.com/openshell/openshell/api/snapshotv1"
	"github.com/openshell/openshell/drivers"
)

// Snapshots travel on the driver's socket as a second service (DriverSnapshots):
// a driver process that does not serve it answers UNIMPLEMENTED, which arrives here
// as drivers.ErrNotSupported.

var _ drivers.Snapshotter = (*Client)(nil)

func (c *Client) snapshots() snapshotv1.DriverSnapshotsClient {
	return snapshotv1.NewDriverSnapshotsClient(c.conn)
}

// SaveSnapshot implements drivers.Snapshotter.
func (c *Client) SaveSnapshot(ctx context.Context, req *snapshotv1.SaveSnapshotRequest) (*snapshotv1.Snapshot, error) {
	resp, err := c.snapshots().SaveSnapshot(ctx, req)
	if err != nil {
		return nil, fromStatus(err)
	}
	return resp.GetSnapshot(), nil
}

// ListSnapshots implements drivers.Snapshotter.
func (c *Client) ListSnapshots(ctx context.Context) ([]*snapshotv1.Snapshot, error) {
	resp, err := c.snapshots().ListDriverSnapshots(ctx, &snapshotv1.ListDriverSnapshotsRequest{})
	if err != nil {
		return nil, fromStatus(err)
	}
	return resp.GetSnapshots(), nil
}

// DeleteSnapshot implements drivers.Snapshotter.
func (c *Client) DeleteSnapshot(ctx context.Context, name string) (int64, error) {
	resp, err := c.snapshots().DeleteDriverSnapshot(ctx, &snapshotv1.DeleteDriverSnapshotRequest{Name: name})
	if err != nil {
		return 0, fromStatus(err)
	}
	return resp.GetFreedBytes(), nil
}

// snapshotServer serves a drivers.Snapshotter as DriverSnapshots.
type snapshotServer struct {
	snapshotv1.UnimplementedDriverSnapshotsServer
	d drivers.Snapshotter
}

// registerSnapshots serves DriverSnapshots when d can snapshot; otherwise the
// service is absent and callers get UNIMPLEMENTED.
func registerSnapshots(srv *grpc.Server, d drivers.Driver) {
	if sn, ok := d.(drivers.Snapshotter); ok {
		snapshotv1.RegisterDriverSnapshotsServer(srv, &snapshotServer{d: sn})
	}
}

func (s *snapshotServer) SaveSnapshot(ctx context.Context, req *snapshotv1.SaveSnapshotRequest) (*snapshotv1.SnapshotResponse, error) {
	if req.GetSandboxId() == "" || req.GetName() == "" {
		return nil, toStatus(fmt.Errorf("save snapshot: sandbox_id and name are required: %w", drivers.ErrInvalidArgument))
	}
	sn, err := s.d.SaveSnapshot(ctx, req)
	if err != nil {
		return nil, toStatus(err)
	}
	return &snapshotv1.SnapshotResponse{Snapshot: sn}, nil
}

func (s *snapshotServer) ListDriverSnapshots(ctx context.Context, _ *snapshotv1.ListDriverSnapshotsRequest) (*snapshotv1.ListSnapshotsResponse, error) {
	l, err := s.d.ListSnapshots(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &snapshotv1.ListSnapshotsResponse{Snapshots: l}, nil
}

func (s *snapshotServer) DeleteDriverSnapshot(ctx context.Context, req *snapshotv1.DeleteDriverSnapshotRequest) (*snapshotv1.DeleteSnapshotResponse, error) {
	freed, err := s.d.DeleteSnapshot(ctx, req.GetName())
	if err != nil {
		return nil, toStatus(err)
	}
	return &snapshotv1.DeleteSnapshotResponse{Deleted: true, FreedBytes: freed}, nil
}
