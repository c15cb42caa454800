package gateway_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	"github.com/openshell/openshell/api/poolv1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/gateway"
)

// poolingDriver is the in-memory driver with pools in a map (a test double of a
// driver with warm pools; the VM driver's pools boot real VMs in e2e/vm), or, with
// served false, a driver process that does not serve the pool service.
type poolingDriver struct {
	*drivertest.MemDriver
	served bool
	pools  map[string]*poolv1.Pool
}

var _ drivers.Pooler = (*poolingDriver)(nil)

func (d *poolingDriver) CreatePool(_ context.Context, req *poolv1.CreatePoolRequest) (*poolv1.Pool, error) {
	if !d.served {
		return nil, fmt.Errorf("DriverPools: %w", drivers.ErrNotSupported)
	}
	if _, ok := d.pools[req.GetName()]; ok {
		return nil, fmt.Errorf("pool %q exists: %w", req.GetName(), drivers.ErrAlreadyExists)
	}
	p := &poolv1.Pool{Name: req.GetName(), Size: req.GetSize(), Image: req.GetImage(), Source: "api"}
	d.pools[p.Name] = p
	return p, nil
}

func (d *poolingDriver) ListPools(context.Context) ([]*poolv1.Pool, error) {
	if !d.served {
		return nil, fmt.Errorf("DriverPools: %w", drivers.ErrNotSupported)
	}
	var out []*poolv1.Pool
	for _, p := range d.pools {
		out = append(out, p)
	}
	return out, nil
}

func (d *poolingDriver) DeletePool(_ context.Context, name string) (int, error) {
	if _, ok := d.pools[name]; !ok {
		return 0, fmt.Errorf("pool %q: no such pool: %w", name, drivers.ErrNotFound)
	}
	delete(d.pools, name)
	return 2, nil
}

func poolsClient(t *testing.T, e *env, tc *tls.Config, opts ...grpc.DialOption) poolv1.PoolsClient {
	cc, err := grpc.NewClient("passthrough:///"+e.addr, append(opts, grpc.WithTransportCredentials(credentials.NewTLS(tc)))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return poolv1.NewPoolsClient(cc)
}

// TestPools: the Pools service passes calls to the driver with its errors' codes; a
// missing name is refused before the driver is asked; a driver without pools, in the
// gateway or as a process without the service, is refused naming the driver that has
// them; a sandbox token may not call it.
func TestPools(t *testing.T) {
	drv := &poolingDriver{MemDriver: drivertest.NewMemDriver(), served: true, pools: map[string]*poolv1.Pool{}}
	e := startEnvWith(t, t.TempDir(), drv.MemDriver, 200*time.Millisecond, func(o *gateway.Options) { o.Driver = drv })
	c := poolsClient(t, e, e.bundle.ClientTLSConfig())
	ctx := t.Context()

	r, err := c.CreatePool(ctx, &poolv1.CreatePoolRequest{Name: "small", Size: 2, Image: "img"})
	if err != nil || r.GetPool().GetName() != "small" || r.GetPool().GetSize() != 2 {
		t.Fatalf("CreatePool: %v, %v", r, err)
	}
	_, err = c.CreatePool(ctx, &poolv1.CreatePoolRequest{Name: "small", Size: 1})
	wantCode(t, err, codes.AlreadyExists)
	_, err = c.CreatePool(ctx, &poolv1.CreatePoolRequest{Size: 1})
	wantCode(t, err, codes.InvalidArgument)
	if !strings.Contains(err.Error(), "name") {
		t.Errorf("no name: %v", err)
	}
	l, err := c.ListPools(ctx, &poolv1.ListPoolsRequest{})
	if err != nil || len(l.GetPools()) != 1 || l.GetPools()[0].GetImage() != "img" {
		t.Fatalf("ListPools: %v, %v", l, err)
	}
	d, err := c.DeletePool(ctx, &poolv1.DeletePoolRequest{Name: "small"})
	if err != nil || !d.GetDeleted() || d.GetStoppedVms() != 2 {
		t.Fatalf("DeletePool: %v, %v", d, err)
	}
	_, err = c.DeletePool(ctx, &poolv1.DeletePoolRequest{Name: "small"})
	wantCode(t, err, codes.NotFound)

	// A sandbox token cannot call it.
	id := e.create("alpha").GetMetadata().GetId()
	tok, err := e.issuer.Mint(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	_, err = poolsClient(t, e, &tls.Config{RootCAs: e.bundle.CertPool(), MinVersion: tls.VersionTLS13}, grpc.WithPerRPCCredentials(bearer(tok))).
		ListPools(ctx, &poolv1.ListPoolsRequest{})
	wantCode(t, err, codes.PermissionDenied)

	// Drivers without pools.
	unserved := &poolingDriver{MemDriver: drivertest.NewMemDriver()}
	for name, env := range map[string]*env{
		"in the gateway": startEnv(t, t.TempDir(), drivertest.NewMemDriver()),
		"as a process":   startEnvWith(t, t.TempDir(), unserved.MemDriver, 200*time.Millisecond, func(o *gateway.Options) { o.Driver = unserved }),
	} {
		_, err := poolsClient(t, env, env.bundle.ClientTLSConfig()).ListPools(ctx, &poolv1.ListPoolsRequest{})
		wantCode(t, err, codes.FailedPrecondition)
		if !strings.Contains(err.Error(), "no warm pools") || !strings.Contains(err.Error(), "vm driver") {
			t.Errorf("a driver without pools (%s): %v", name, err)
		}
	}
}
