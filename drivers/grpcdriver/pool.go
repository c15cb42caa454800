package grpcdriver

import (
	"context"

	"google.golang.org/grpc"

	"github.com/openshell/openshell/api/poolv1"
	"github.com/openshell/openshell/drivers"
)

// Warm pools travel on the driver's socket as a third service (DriverPools): a
// driver process that does not serve it answers UNIMPLEMENTED, which arrives here
// as drivers.ErrNotSupported.

var _ drivers.Pooler = (*Client)(nil)

func (c *Client) pools() poolv1.DriverPoolsClient {
	return poolv1.NewDriverPoolsClient(c.conn)
}

// CreatePool implements drivers.Pooler.
func (c *Client) CreatePool(ctx context.Context, req *poolv1.CreatePoolRequest) (*poolv1.Pool, error) {
	resp, err := c.pools().CreateDriverPool(ctx, req)
	if err != nil {
		return nil, fromStatus(err)
	}
	return resp.GetPool(), nil
}

// ListPools implements drivers.Pooler.
func (c *Client) ListPools(ctx context.Context) ([]*poolv1.Pool, error) {
	resp, err := c.pools().ListDriverPools(ctx, &poolv1.ListPoolsRequest{})
	if err != nil {
		return nil, fromStatus(err)
	}
	return resp.GetPools(), nil
}

// DeletePool implements drivers.Pooler.
func (c *Client) DeletePool(ctx context.Context, name string) (int, error) {
	resp, err := c.pools().DeleteDriverPool(ctx, &poolv1.DeletePoolRequest{Name: name})
	if err != nil {
		return 0, fromStatus(err)
	}
	return int(resp.GetStoppedVms()), nil
}

// poolServer serves a drivers.Pooler as DriverPools.
type poolServer struct {
	poolv1.UnimplementedDriverPoolsServer
	d drivers.Pooler
}

// registerPools serves DriverPools when d has warm pools; otherwise the service is
// absent and callers get UNIMPLEMENTED.
func registerPools(srv *grpc.Server, d drivers.Driver) {
	if p, ok := d.(drivers.Pooler); ok {
		poolv1.RegisterDriverPoolsServer(srv, &poolServer{d: p})
	}
}

func (s *poolServer) CreateDriverPool(ctx context.Context, req *poolv1.CreatePoolRequest) (*poolv1.PoolResponse, error) {
	p, err := s.d.CreatePool(ctx, req)
	if err != nil {
		return nil, toStatus(err)
	}
	return &poolv1.PoolResponse{Pool: p}, nil
}

func (s *poolServer) ListDriverPools(ctx context.Context, _ *poolv1.ListPoolsRequest) (*poolv1.ListPoolsResponse, error) {
	l, err := s.d.ListPools(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &poolv1.ListPoolsResponse{Pools: l}, nil
}

func (s *poolServer) DeleteDriverPool(ctx context.Context, req *poolv1.DeletePoolRequest) (*poolv1.DeletePoolResponse, error) {
	n, err := s.d.DeletePool(ctx, req.GetName())
	if err != nil {
		return nil, toStatus(err)
	}
	return &poolv1.DeletePoolResponse{Deleted: true, StoppedVms: int32(n)}, nil
}
