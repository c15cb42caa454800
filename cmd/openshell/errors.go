package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/openshell/openshell/gateway/clientconf"
)

// exitError carries a specific exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	if code, ok := remoteExitCode(err); ok {
		return code
	}
	if strings.HasPrefix(err.Error(), "unknown command") || strings.HasPrefix(err.Error(), "unknown flag") ||
		strings.Contains(err.Error(), "accepts ") || strings.Contains(err.Error(), "requires at least") {
		return 2
	}
	return 1
}

// humanize turns an error into one sentence that says what to fix.
func humanize(err error, gw string) string {
	if errors.Is(err, clientconf.ErrNotConfigured) {
		return err.Error()
	}
	if errors.Is(err, context.DeadlineExceeded) && status.Code(err) == codes.Unknown {
		return err.Error()
	}
	// The innermost gRPC status (status.FromError would fold the wrapping text into
	// the message).
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) {
		return err.Error()
	}
	st, ok := se.GRPCStatus(), true
	if !ok || st.Code() == codes.OK || st.Code() == codes.Unknown {
		return err.Error()
	}
	msg := st.Message()
	prefix := ""
	if outer := err.Error(); !strings.Contains(outer, "rpc error:") {
		return outer
	} else if i := strings.Index(outer, "rpc error:"); i > 0 {
		prefix = outer[:i]
	}
	var s string
	switch st.Code() {
	case codes.Unavailable:
		if strings.Contains(msg, "connection refused") || strings.Contains(msg, "dial") || strings.Contains(msg, "no such file") {
			s = fmt.Sprintf("cannot reach gateway %q (%s); start it with `openshell gateway start` or pick another with --gateway", gw, msg)
		} else if strings.Contains(msg, "certificate") || strings.Contains(msg, "tls") || strings.Contains(msg, "handshake") {
			s = fmt.Sprintf("TLS with gateway %q failed (%s); re-run `openshell gateway start` to refresh the client files", gw, msg)
		} else {
			s = fmt.Sprintf("gateway %q is unavailable: %s; retry shortly", gw, msg)
		}
	case codes.Unauthenticated:
		s = fmt.Sprintf("gateway %q did not accept this client: %s; re-run `openshell gateway start` to refresh ~/.config/openshell/gateways/%s", gw, msg, gw)
	case codes.PermissionDenied:
		s = "permission denied: " + msg
	case codes.NotFound:
		s = msg + "; check the name with `openshell sandbox list`"
	case codes.AlreadyExists:
		s = msg
	case codes.InvalidArgument, codes.OutOfRange:
		s = "invalid request: " + msg
	case codes.FailedPrecondition:
		s = msg
	case codes.Aborted:
		s = "the sandbox changed while this command ran (" + msg + "); run it again"
	case codes.DeadlineExceeded:
		s = "timed out waiting for the gateway: " + msg
	case codes.Unimplemented:
		s = "this gateway does not support that: " + msg + "; upgrade the gateway"
	case codes.ResourceExhausted:
		s = "limit reached: " + msg
	default:
		s = fmt.Sprintf("gateway error (%s): %s", st.Code(), msg)
	}
	return prefix + s
}
