package grpcdriver

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/openshell/openshell/drivers"
)

// sentinelCodes is the one table both directions use.
var sentinelCodes = []struct {
	err  error
	code codes.Code
}{
	{drivers.ErrNotFound, codes.NotFound},
	{drivers.ErrAlreadyExists, codes.AlreadyExists},
	{drivers.ErrInvalidArgument, codes.InvalidArgument},
	{drivers.ErrUnavailable, codes.Unavailable},
	{drivers.ErrFailedPrecondition, codes.FailedPrecondition},
	{drivers.ErrNotSupported, codes.Unimplemented},
}

// toStatus converts a driver error into a gRPC status error at the server edge.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	for _, s := range sentinelCodes {
		if errors.Is(err, s.err) {
			return status.Error(s.code, err.Error())
		}
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	if s, ok := status.FromError(err); ok {
		return s.Err()
	}
	return status.Error(codes.Internal, err.Error())
}

// remoteError is a driver error received over gRPC. It keeps the driver's
// message, unwraps to the matching sentinel (so errors.Is works across the
// wire) and still carries its gRPC status for callers that re-serve it.
type remoteError struct {
	st       *status.Status
	sentinel error
}

func (e *remoteError) Error() string              { return "compute driver: " + e.st.Message() }
func (e *remoteError) Unwrap() error              { return e.sentinel }
func (e *remoteError) GRPCStatus() *status.Status { return e.st }

// fromStatus converts a gRPC error returned by a driver back into an error
// wrapping the drivers sentinel for its code.
func fromStatus(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	for _, s := range sentinelCodes {
		if st.Code() == s.code {
			return &remoteError{st: st, sentinel: s.err}
		}
	}
	switch st.Code() {
	case codes.Canceled:
		return &remoteError{st: st, sentinel: context.Canceled}
	case codes.DeadlineExceeded:
		return &remoteError{st: st, sentinel: context.DeadlineExceeded}
	}
	return &remoteError{st: st}
}
