package grpcdriver

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/openshell/openshell/drivers"
)

func TestErrorMappingRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code codes.Code
	}{
		{drivers.ErrNotFound, codes.NotFound},
		{drivers.ErrAlreadyExists, codes.AlreadyExists},
		{drivers.ErrInvalidArgument, codes.InvalidArgument},
		{drivers.ErrUnavailable, codes.Unavailable},
		{drivers.ErrFailedPrecondition, codes.FailedPrecondition},
		{drivers.ErrNotSupported, codes.Unimplemented},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
		{context.Canceled, codes.Canceled},
	} {
		t.Run(tc.code.String(), func(t *testing.T) {
			wrapped := fmt.Errorf("sandbox sb-1: %w", tc.err)
			st := toStatus(wrapped)
			if got := status.Code(st); got != tc.code {
				t.Fatalf("code %v, want %v", got, tc.code)
			}
			back := fromStatus(st)
			if !errors.Is(back, tc.err) {
				t.Errorf("fromStatus(%v) = %v, does not match the sentinel", st, back)
			}
			if status.Code(back) != tc.code {
				t.Errorf("re-served code %v, want %v", status.Code(back), tc.code)
			}
			if want := "compute driver: sandbox sb-1: " + tc.err.Error(); back.Error() != want {
				t.Errorf("message %q, want %q", back.Error(), want)
			}
		})
	}
	if got := status.Code(toStatus(errors.New("boom"))); got != codes.Internal {
		t.Errorf("plain error mapped to %v, want Internal", got)
	}
	if back := fromStatus(status.Error(codes.Internal, "x")); errors.Is(back, drivers.ErrNotFound) || status.Code(back) != codes.Internal {
		t.Errorf("Internal round trip = %v", back)
	}
	if toStatus(nil) != nil || fromStatus(nil) != nil {
		t.Error("nil errors must stay nil")
	}
}
