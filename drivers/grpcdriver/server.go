// Package grpcdriver serves a drivers.Driver as openshell.compute.v1.ComputeDriver
// over plaintext h2c gRPC (normally on a Unix socket whose permissions are the
// access boundary) and consumes such a server as a drivers.Driver.
package grpcdriver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
)

// stopGrace bounds how long Serve waits for in-flight unary calls after ctx
// ends; Watch streams never end on their own, so they are cut after it.
const stopGrace = 2 * time.Second

// Serve serves d as ComputeDriver on lis until ctx ends (then it returns nil)
// or the listener fails. It does not close d.
func Serve(ctx context.Context, lis net.Listener, d drivers.Driver, opts ...grpc.ServerOption) error {
	srv := grpc.NewServer(opts...)
	computev1.RegisterComputeDriverServer(srv, &server{d: d})
	registerSnapshots(srv, d)
	registerPools(srv, d)

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err := <-errc:
		if err != nil {
			return fmt.Errorf("serve compute driver on %s: %w", lis.Addr(), err)
		}
		return nil
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(stopGrace):
		srv.Stop()
		<-stopped
	}
	<-errc
	return nil
}

// ListenUnix listens on a Unix socket at path with mode 0600, replacing a
// stale socket file left by a previous process but refusing to steal one
// that still answers.
func ListenUnix(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("listen on %s: %w: the path exists and is not a socket; remove it or choose another path", path, drivers.ErrFailedPrecondition)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			_ = c.Close()
			return nil, fmt.Errorf("listen on %s: %w: another process is serving this socket; stop it or choose another path", path, drivers.ErrAlreadyExists)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = lis.Close()
		return nil, fmt.Errorf("chmod socket %s: %w", path, err)
	}
	return lis, nil
}

// server adapts a drivers.Driver to the generated ComputeDriverServer.
type server struct {
	computev1.UnimplementedComputeDriverServer
	d drivers.Driver
}

var _ computev1.ComputeDriverServer = (*server)(nil)

func (s *server) GetCapabilities(ctx context.Context, _ *computev1.GetCapabilitiesRequest) (*computev1.GetCapabilitiesResponse, error) {
	resp, err := s.d.Capabilities(ctx)
	return resp, toStatus(err)
}

func (s *server) GetGatewayListenerRequirements(ctx context.Context, _ *computev1.GetGatewayListenerRequirementsRequest) (*computev1.GetGatewayListenerRequirementsResponse, error) {
	lr, ok := s.d.(drivers.ListenerRequirer)
	if !ok {
		return nil, status.Error(codes.Unimplemented, "driver has no listener requirements")
	}
	reqs, err := lr.ListenerRequirements(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &computev1.GetGatewayListenerRequirementsResponse{Requirements: reqs}, nil
}

func (s *server) ValidateSandboxCreate(ctx context.Context, req *computev1.ValidateSandboxCreateRequest) (*computev1.ValidateSandboxCreateResponse, error) {
	if err := s.d.ValidateCreate(ctx, req.GetSandbox()); err != nil {
		return nil, toStatus(err)
	}
	return &computev1.ValidateSandboxCreateResponse{}, nil
}

func (s *server) GetSandbox(ctx context.Context, req *computev1.GetSandboxRequest) (*computev1.GetSandboxResponse, error) {
	sb, err := s.d.Get(ctx, req.GetSandboxId(), req.GetSandboxName())
	if err != nil {
		return nil, toStatus(err)
	}
	return &computev1.GetSandboxResponse{Sandbox: sb}, nil
}

func (s *server) ListSandboxes(ctx context.Context, _ *computev1.ListSandboxesRequest) (*computev1.ListSandboxesResponse, error) {
	sbs, err := s.d.List(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &computev1.ListSandboxesResponse{Sandboxes: sbs}, nil
}

func (s *server) CreateSandbox(ctx context.Context, req *computev1.CreateSandboxRequest) (*computev1.CreateSandboxResponse, error) {
	if err := s.d.Create(ctx, req.GetSandbox()); err != nil {
		return nil, toStatus(err)
	}
	return &computev1.CreateSandboxResponse{}, nil
}

func (s *server) StopSandbox(ctx context.Context, req *computev1.StopSandboxRequest) (*computev1.StopSandboxResponse, error) {
	if req.GetSuspend() {
		sus, ok := s.d.(drivers.Suspender)
		if !ok {
			return nil, toStatus(fmt.Errorf("this compute driver cannot suspend sandboxes: stop without suspend: %w", drivers.ErrFailedPrecondition))
		}
		if err := sus.Suspend(ctx, req.GetSandboxId(), req.GetSandboxName()); err != nil {
			return nil, toStatus(err)
		}
		return &computev1.StopSandboxResponse{}, nil
	}
	if err := s.d.Stop(ctx, req.GetSandboxId(), req.GetSandboxName()); err != nil {
		return nil, toStatus(err)
	}
	return &computev1.StopSandboxResponse{}, nil
}

func (s *server) StartSandbox(ctx context.Context, req *computev1.StartSandboxRequest) (*computev1.StartSandboxResponse, error) {
	if err := s.d.Start(ctx, req.GetSandboxId(), req.GetSandboxName()); err != nil {
		return nil, toStatus(err)
	}
	return &computev1.StartSandboxResponse{}, nil
}

func (s *server) DeleteSandbox(ctx context.Context, req *computev1.DeleteSandboxRequest) (*computev1.DeleteSandboxResponse, error) {
	deleted, err := s.d.Delete(ctx, req.GetSandboxId(), req.GetSandboxName())
	if err != nil {
		return nil, toStatus(err)
	}
	return &computev1.DeleteSandboxResponse{Deleted: deleted}, nil
}

func (s *server) WatchSandboxes(_ *computev1.WatchSandboxesRequest, stream grpc.ServerStreamingServer[computev1.WatchSandboxesEvent]) error {
	ctx := stream.Context()
	events, err := s.d.Watch(ctx)
	if err != nil {
		return toStatus(err)
	}
	// Headers tell the client the driver has subscribed, so it can create
	// sandboxes without racing the subscription (see Client.Watch).
	if err := stream.SendHeader(nil); err != nil {
		return err
	}
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				if ctx.Err() != nil {
					return status.FromContextError(ctx.Err()).Err()
				}
				return nil
			}
			if err := stream.Send(ev); err != nil {
				return err
			}
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}

func (s *server) EnsureWorkspace(ctx context.Context, req *computev1.EnsureWorkspaceRequest) (*computev1.EnsureWorkspaceResponse, error) {
	wm, ok := s.d.(drivers.WorkspaceManager)
	if !ok {
		return nil, status.Error(codes.Unimplemented, "driver does not manage workspaces")
	}
	if err := wm.EnsureWorkspace(ctx, req.GetWorkspace()); err != nil {
		return nil, toStatus(err)
	}
	return &computev1.EnsureWorkspaceResponse{}, nil
}

func (s *server) DeleteWorkspace(ctx context.Context, req *computev1.DeleteWorkspaceRequest) (*computev1.DeleteWorkspaceResponse, error) {
	wm, ok := s.d.(drivers.WorkspaceManager)
	if !ok {
		return nil, status.Error(codes.Unimplemented, "driver does not manage workspaces")
	}
	if err := wm.DeleteWorkspace(ctx, req.GetWorkspace()); err != nil {
		return nil, toStatus(err)
	}
	return &computev1.DeleteWorkspaceResponse{}, nil
}

// errorsIsUnimplemented reports whether a driver answered UNIMPLEMENTED.
func errorsIsUnimplemented(err error) bool { return errors.Is(err, drivers.ErrNotSupported) }
