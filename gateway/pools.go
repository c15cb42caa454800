package gateway

// Warm pools (the project's Pools service): the driver keeps them and boots their
// VMs; the gateway passes the calls on and names the fix when its driver has none.

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc"

	"github.com/openshell/openshell/api/poolv1"
	"github.com/openshell/openshell/drivers"
)

// poolService serves poolv1.Pools with the gateway's driver.
type poolService struct {
	poolv1.UnimplementedPoolsServer
	s *Server
}

func (s *Server) registerPools(r grpc.ServiceRegistrar) {
	poolv1.RegisterPoolsServer(r, &poolService{s: s})
}

// pooler is the driver's warm pools, or an error naming the fix.
func (s *Server) pooler() (drivers.Pooler, error) {
	p, ok := s.drv.(drivers.Pooler)
	if !ok {
		return nil, s.noPools()
	}
	return p, nil
}

func (s *Server) noPools() error {
	return fmt.Errorf("the %s driver has no warm pools (the vm driver has: start the gateway with --driver vm): %w", s.opts.DriverName, drivers.ErrFailedPrecondition)
}

// poolErr turns a driver process without the pool service into noPools.
func (s *Server) poolErr(err error) error {
	if errors.Is(err, drivers.ErrNotSupported) {
		return s.noPools()
	}
	return err
}

func (g *poolService) CreatePool(ctx context.Context, req *poolv1.CreatePoolRequest) (*poolv1.PoolResponse, error) {
	if req.GetName() == "" {
		return nil, invalidf("name: name the pool (1-32 lowercase letters, digits or '-')")
	}
	p, err := g.s.pooler()
	if err != nil {
		return nil, err
	}
	pool, err := p.CreatePool(ctx, req)
	if err != nil {
		return nil, g.s.poolErr(err)
	}
	return &poolv1.PoolResponse{Pool: pool}, nil
}

func (g *poolService) ListPools(ctx context.Context, _ *poolv1.ListPoolsRequest) (*poolv1.ListPoolsResponse, error) {
	p, err := g.s.pooler()
	if err != nil {
		return nil, err
	}
	l, err := p.ListPools(ctx)
	if err != nil {
		return nil, g.s.poolErr(err)
	}
	return &poolv1.ListPoolsResponse{Pools: l}, nil
}

func (g *poolService) DeletePool(ctx context.Context, req *poolv1.DeletePoolRequest) (*poolv1.DeletePoolResponse, error) {
	if req.GetName() == "" {
		return nil, invalidf("name: name the pool to delete (see `openshell pool list`)")
	}
	p, err := g.s.pooler()
	if err != nil {
		return nil, err
	}
	n, err := p.DeletePool(ctx, req.GetName())
	if err != nil {
		return nil, g.s.poolErr(err)
	}
	return &poolv1.DeletePoolResponse{Deleted: true, StoppedVms: int32(n)}, nil
}
