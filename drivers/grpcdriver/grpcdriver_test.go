package grpcdriver_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/drivers/grpcdriver"
)

// socketPath returns a short socket path (sun_path is limited to 108 bytes,
// and t.TempDir paths can be long).
func socketPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "osgd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return filepath.Join(dir, "d.sock")
}

// serve runs d behind grpcdriver.Serve on a real Unix socket and returns a
// dialed client; everything stops at test cleanup.
func serve(t *testing.T, d drivers.Driver) *grpcdriver.Client {
	t.Helper()
	path := socketPath(t)
	lis, err := grpcdriver.ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- grpcdriver.Serve(ctx, lis, d) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		_ = d.Close()
	})
	dctx, dcancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer dcancel()
	c, err := grpcdriver.Dial(dctx, path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestSuiteOverUnixSocket(t *testing.T) {
	drivertest.Suite(t, func(t *testing.T) drivers.Driver {
		return serve(t, drivertest.NewMemDriver())
	}, drivertest.Options{Image: "mem.invalid/img", ReadyTimeout: 5 * time.Second})
}

func TestErrorsCrossTheWire(t *testing.T) {
	m := drivertest.NewMemDriver()
	c := serve(t, m)
	t.Cleanup(func() { _ = c.Close() })
	for _, sentinel := range []error{
		drivers.ErrNotFound, drivers.ErrAlreadyExists, drivers.ErrInvalidArgument,
		drivers.ErrUnavailable, drivers.ErrFailedPrecondition, drivers.ErrNotSupported,
	} {
		m.FailOn(drivertest.OpList, fmt.Errorf("sandbox x: %w", sentinel))
		_, err := c.List(t.Context())
		if !errors.Is(err, sentinel) {
			t.Errorf("List with injected %v returned %v", sentinel, err)
		}
	}
	m.FailOn(drivertest.OpList, errors.New("plain failure"))
	if _, err := c.List(t.Context()); err == nil || errors.Is(err, drivers.ErrNotFound) {
		t.Errorf("plain failure came back as %v", err)
	}
	m.FailOn(drivertest.OpWatch, fmt.Errorf("no events: %w", drivers.ErrUnavailable))
	if _, err := c.Watch(t.Context()); !errors.Is(err, drivers.ErrUnavailable) {
		t.Errorf("Watch with injected failure returned %v, want ErrUnavailable at once", err)
	}
}

func TestOptionalAbilities(t *testing.T) {
	m := drivertest.NewMemDriver()
	m.SetListenerRequirements([]*computev1.GatewayListenerRequirement{{
		Reason:   "guests reach the host via the default route",
		Selector: &computev1.GatewayListenerRequirement_DefaultRouteInterface{DefaultRouteInterface: &computev1.GatewayDefaultRouteInterfaceRequirement{}},
	}})
	c := serve(t, m)
	t.Cleanup(func() { _ = c.Close() })
	reqs, err := c.ListenerRequirements(t.Context())
	if err != nil || len(reqs) != 1 || reqs[0].GetDefaultRouteInterface() == nil {
		t.Errorf("ListenerRequirements = %v, %v", reqs, err)
	}
	if err := c.EnsureWorkspace(t.Context(), "team-a"); err != nil {
		t.Fatal(err)
	}
	if got := m.Workspaces(); len(got) != 1 || got[0] != "team-a" {
		t.Errorf("workspaces after Ensure = %v", got)
	}
	if err := c.EnsureWorkspace(t.Context(), ""); !errors.Is(err, drivers.ErrInvalidArgument) {
		t.Errorf("EnsureWorkspace(\"\") = %v", err)
	}
	if err := c.DeleteWorkspace(t.Context(), "team-a"); err != nil || len(m.Workspaces()) != 0 {
		t.Errorf("DeleteWorkspace: %v, left %v", err, m.Workspaces())
	}
}

// coreOnly hides MemDriver's optional abilities, as a driver without them.
type coreOnly struct{ drivers.Driver }

func TestMissingAbilitiesAreUnimplemented(t *testing.T) {
	c := serve(t, coreOnly{drivertest.NewMemDriver()})
	t.Cleanup(func() { _ = c.Close() })
	reqs, err := c.ListenerRequirements(t.Context())
	if err != nil || len(reqs) != 0 {
		t.Errorf("ListenerRequirements = %v, %v; want nothing required", reqs, err)
	}
	if err := c.EnsureWorkspace(t.Context(), "ws"); err != nil {
		t.Errorf("EnsureWorkspace = %v, want success on UNIMPLEMENTED", err)
	}
	if err := c.DeleteWorkspace(t.Context(), "ws"); err != nil {
		t.Errorf("DeleteWorkspace = %v, want success on UNIMPLEMENTED", err)
	}
}

func TestDialWaitsForLateServer(t *testing.T) {
	path := socketPath(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	go func() {
		// The driver starts listening a second after the gateway dials.
		time.Sleep(time.Second)
		lis, err := grpcdriver.ListenUnix(path)
		if err != nil {
			done <- err
			return
		}
		done <- grpcdriver.Serve(ctx, lis, drivertest.NewMemDriver())
	}()
	start := time.Now()
	dctx, dcancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer dcancel()
	c, err := grpcdriver.Dial(dctx, path)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	if waited := time.Since(start); waited > 3*time.Second {
		t.Errorf("Dial took %v for a server that started after 1s; retry interval should be 250ms", waited)
	}
	caps, err := c.Capabilities(t.Context())
	if err != nil || caps.GetDriverName() != drivertest.MemDriverName {
		t.Errorf("Capabilities = %v, %v", caps, err)
	}
}

func TestDialGivesUpAtDeadline(t *testing.T) {
	path := socketPath(t)
	ctx, cancel := context.WithTimeout(t.Context(), 700*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := grpcdriver.Dial(ctx, path)
	if !errors.Is(err, drivers.ErrUnavailable) {
		t.Errorf("Dial to a missing socket = %v, want ErrUnavailable", err)
	}
	if waited := time.Since(start); waited > 3*time.Second {
		t.Errorf("Dial returned after %v, ctx deadline was 700ms", waited)
	}
}

func TestListenUnixRefusesLiveSocket(t *testing.T) {
	path := socketPath(t)
	lis, err := grpcdriver.ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode = %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	if _, err := grpcdriver.ListenUnix(path); !errors.Is(err, drivers.ErrAlreadyExists) {
		t.Errorf("second ListenUnix = %v, want ErrAlreadyExists", err)
	}
	// A stale socket file (nobody listening) is replaced.
	stale := socketPath(t)
	l2, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l2.(*net.UnixListener).SetUnlinkOnClose(false)
	_ = l2.Close()
	l3, err := grpcdriver.ListenUnix(stale)
	if err != nil {
		t.Fatalf("ListenUnix over a stale socket: %v", err)
	}
	_ = l3.Close()
}
