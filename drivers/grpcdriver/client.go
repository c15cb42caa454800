package grpcdriver

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
)

const (
	// DialRetryInterval is how often Dial (and later reconnects) retry the socket.
	DialRetryInterval = 250 * time.Millisecond
	// DefaultDialTimeout bounds Dial when ctx has no deadline.
	DefaultDialTimeout = 30 * time.Second
	// watchBuffer decouples a slow consumer from the stream briefly.
	watchBuffer = 64
)

// Client is a drivers.Driver backed by a remote ComputeDriver.
type Client struct {
	conn *grpc.ClientConn
	rpc  computev1.ComputeDriverClient
}

var (
	_ drivers.Driver           = (*Client)(nil)
	_ drivers.ListenerRequirer = (*Client)(nil)
	_ drivers.WorkspaceManager = (*Client)(nil)
	_ drivers.Suspender        = (*Client)(nil)
)

// NewClient wraps an existing connection; Close then closes conn too.
func NewClient(conn *grpc.ClientConn) *Client {
	return &Client{conn: conn, rpc: computev1.NewComputeDriverClient(conn)}
}

// Dial connects to a driver serving on the Unix socket at socketPath,
// retrying every 250 ms until the connection is ready, ctx ends, or (when
// ctx has no deadline) 30 s pass. The error wraps drivers.ErrUnavailable.
func Dial(ctx context.Context, socketPath string) (*Client, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultDialTimeout)
		defer cancel()
	}
	dialer := func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socketPath)
	}
	// The authority is a placeholder: the socket path is the address.
	conn, err := grpc.NewClient("passthrough:///compute-driver",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dialer),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: DialRetryInterval, Multiplier: 1, MaxDelay: DialRetryInterval},
			MinConnectTimeout: 5 * time.Second,
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("compute driver socket %s: %w", socketPath, err)
	}
	conn.Connect()
	for {
		st := conn.GetState()
		if st == connectivity.Ready {
			break
		}
		if st == connectivity.Idle {
			conn.Connect()
		}
		if !conn.WaitForStateChange(ctx, st) {
			_ = conn.Close()
			return nil, fmt.Errorf("compute driver socket %s not ready (last state %s): %w: %w; check that the driver process is running and listening there",
				socketPath, st, drivers.ErrUnavailable, ctx.Err())
		}
	}
	return NewClient(conn), nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

func (c *Client) Capabilities(ctx context.Context) (*computev1.GetCapabilitiesResponse, error) {
	resp, err := c.rpc.GetCapabilities(ctx, &computev1.GetCapabilitiesRequest{})
	return resp, fromStatus(err)
}

func (c *Client) ValidateCreate(ctx context.Context, sb *computev1.DriverSandbox) error {
	_, err := c.rpc.ValidateSandboxCreate(ctx, &computev1.ValidateSandboxCreateRequest{Sandbox: sb})
	return fromStatus(err)
}

func (c *Client) Create(ctx context.Context, sb *computev1.DriverSandbox) error {
	_, err := c.rpc.CreateSandbox(ctx, &computev1.CreateSandboxRequest{Sandbox: sb})
	return fromStatus(err)
}

func (c *Client) Get(ctx context.Context, id, name string) (*computev1.DriverSandbox, error) {
	resp, err := c.rpc.GetSandbox(ctx, &computev1.GetSandboxRequest{SandboxId: id, SandboxName: name})
	if err != nil {
		return nil, fromStatus(err)
	}
	return resp.GetSandbox(), nil
}

func (c *Client) List(ctx context.Context) ([]*computev1.DriverSandbox, error) {
	resp, err := c.rpc.ListSandboxes(ctx, &computev1.ListSandboxesRequest{})
	if err != nil {
		return nil, fromStatus(err)
	}
	return resp.GetSandboxes(), nil
}

func (c *Client) Stop(ctx context.Context, id, name string) error {
	_, err := c.rpc.StopSandbox(ctx, &computev1.StopSandboxRequest{SandboxId: id, SandboxName: name})
	return fromStatus(err)
}

// Suspend implements drivers.Suspender; a driver that cannot answers
// FailedPrecondition.
func (c *Client) Suspend(ctx context.Context, id, name string) error {
	_, err := c.rpc.StopSandbox(ctx, &computev1.StopSandboxRequest{SandboxId: id, SandboxName: name, Suspend: true})
	return fromStatus(err)
}

func (c *Client) Start(ctx context.Context, id, name string) error {
	_, err := c.rpc.StartSandbox(ctx, &computev1.StartSandboxRequest{SandboxId: id, SandboxName: name})
	return fromStatus(err)
}

func (c *Client) Delete(ctx context.Context, id, name string) (bool, error) {
	resp, err := c.rpc.DeleteSandbox(ctx, &computev1.DeleteSandboxRequest{SandboxId: id, SandboxName: name})
	if err != nil {
		return false, fromStatus(err)
	}
	return resp.GetDeleted(), nil
}

// Watch opens a WatchSandboxes stream and returns once the driver has
// subscribed (or refused), so events of calls made after Watch returns are
// not missed. The channel closes when the stream ends for any reason; the
// reason is logged, and the caller re-watches if it still wants events.
func (c *Client) Watch(ctx context.Context) (<-chan *computev1.WatchSandboxesEvent, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := c.rpc.WatchSandboxes(ctx, &computev1.WatchSandboxesRequest{})
	if err != nil {
		cancel()
		return nil, fromStatus(err)
	}
	md, err := stream.Header()
	if err != nil {
		cancel()
		return nil, fromStatus(err)
	}
	var first *computev1.WatchSandboxesEvent
	if md == nil {
		// No headers: the server ended the stream at once; Recv has the status.
		first, err = stream.Recv()
		if err != nil {
			cancel()
			return nil, fromStatus(err)
		}
	}
	out := make(chan *computev1.WatchSandboxesEvent, watchBuffer)
	go func() {
		defer cancel()
		defer close(out)
		if first != nil {
			select {
			case out <- first:
			case <-ctx.Done():
				return
			}
		}
		for {
			ev, err := stream.Recv()
			if err != nil {
				if ctx.Err() == nil {
					slog.Default().Warn("compute driver watch ended", "err", fromStatus(err))
				}
				return
			}
			select {
			case out <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// ListenerRequirements returns nil when the driver answers UNIMPLEMENTED.
func (c *Client) ListenerRequirements(ctx context.Context) ([]*computev1.GatewayListenerRequirement, error) {
	resp, err := c.rpc.GetGatewayListenerRequirements(ctx, &computev1.GetGatewayListenerRequirementsRequest{})
	if err != nil {
		if err := fromStatus(err); !errorsIsUnimplemented(err) {
			return nil, err
		}
		return nil, nil
	}
	return resp.GetRequirements(), nil
}

// EnsureWorkspace succeeds when the driver answers UNIMPLEMENTED.
func (c *Client) EnsureWorkspace(ctx context.Context, ws string) error {
	_, err := c.rpc.EnsureWorkspace(ctx, &computev1.EnsureWorkspaceRequest{Workspace: ws})
	if err = fromStatus(err); errorsIsUnimplemented(err) {
		return nil
	}
	return err
}

// DeleteWorkspace succeeds when the driver answers UNIMPLEMENTED.
func (c *Client) DeleteWorkspace(ctx context.Context, ws string) error {
	_, err := c.rpc.DeleteWorkspace(ctx, &computev1.DeleteWorkspaceRequest{Workspace: ws})
	if err = fromStatus(err); errorsIsUnimplemented(err) {
		return nil
	}
	return err
}
