package kubernetes

import (
	"errors"
	"fmt"
	"net"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/containers"
)

// wrap maps an API error of `verb resource` (e.g. "create", "secrets") to a driver
// sentinel with what to do about it.
func (d *Driver) wrap(err error, verb, resource, what string) error {
	if err == nil {
		return nil
	}
	return mapError(err, d.cfg.Namespace, d.server, verb, resource, what)
}

// mapError is wrap without a driver (tests call it directly).
func mapError(err error, ns, server, verb, resource, what string) error {
	apiGroup := ""
	if resource == resourceName {
		apiGroup = group
	}
	switch {
	case apierrors.IsForbidden(err):
		return fmt.Errorf("kubernetes driver: %s: %w: the gateway's identity may not %s %s%s in namespace %s; grant it with a Role rule {apiGroups: [%q], resources: [%q], verbs: [%q]} bound to its service account (the openshell Helm chart's Role has every rule the driver needs): %v",
			what, drivers.ErrFailedPrecondition, verb, resource, groupSuffix(apiGroup), ns, apiGroup, resource, verb, err)
	case apierrors.IsUnauthorized(err):
		return fmt.Errorf("kubernetes driver: %s: %w: the API server at %s did not accept the gateway's credentials; fix the kubeconfig (or the pod's service account token): %v",
			what, drivers.ErrFailedPrecondition, server, err)
	case isNamespaceMissing(err):
		return fmt.Errorf("kubernetes driver: %s: %w: namespace %q does not exist; create it (kubectl create namespace %s) or set namespace in [drivers.kubernetes]",
			what, drivers.ErrFailedPrecondition, ns, ns)
	case resource == resourceName && isResourceMissing(err):
		return fmt.Errorf("kubernetes driver: %s: %w: the Sandbox CRD %s is not served; %s", what, drivers.ErrFailedPrecondition, crdName, crdFix)
	case apierrors.IsNotFound(err):
		return fmt.Errorf("kubernetes driver: %s: %w", what, drivers.ErrNotFound)
	case apierrors.IsAlreadyExists(err):
		return fmt.Errorf("kubernetes driver: %s: %w", what, drivers.ErrAlreadyExists)
	case apierrors.IsInvalid(err) || apierrors.IsBadRequest(err):
		return fmt.Errorf("kubernetes driver: %s: %w: %v", what, drivers.ErrInvalidArgument, err)
	case apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) || apierrors.IsTooManyRequests(err) ||
		apierrors.IsServiceUnavailable(err) || apierrors.IsInternalError(err) || unreachable(err):
		return fmt.Errorf("kubernetes driver: %s: %w: the API server at %s: %v", what, drivers.ErrUnavailable, server, err)
	}
	return fmt.Errorf("kubernetes driver: %s: %w", what, err)
}

func groupSuffix(g string) string {
	if g == "" {
		return ""
	}
	return "." + g
}

// isNamespaceMissing tells a create into a namespace that does not exist.
func isNamespaceMissing(err error) bool {
	var se apierrors.APIStatus
	if !apierrors.IsNotFound(err) || !errors.As(err, &se) {
		return false
	}
	d := se.Status().Details
	return d != nil && d.Kind == "namespaces"
}

// isResourceMissing tells a 404 for the resource itself (no CRD) from one for a
// named object: the apiserver says "the server could not find the requested
// resource" without naming an object.
func isResourceMissing(err error) bool {
	var se apierrors.APIStatus
	if !apierrors.IsNotFound(err) || !errors.As(err, &se) {
		return false
	}
	d := se.Status().Details
	return d == nil || d.Name == ""
}

func unreachable(err error) bool {
	var dnsErr *net.DNSError
	return containers.Unreachable(err) || errors.As(err, &dnsErr)
}
