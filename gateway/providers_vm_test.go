package gateway_test

import (
	"context"
	"crypto/tls"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/gateway"
	"github.com/openshell/openshell/gateway/secrets"
	"github.com/openshell/openshell/internal/hostcred"
)

// vmMemDriver is the in-memory driver standing for the VM driver process: it has a
// runner key, as driversel's VM driver does.
type vmMemDriver struct {
	*drivertest.MemDriver
	key []byte
}

func (d vmMemDriver) RunnerKey() []byte { return d.key }

var _ gateway.RunnerKeyer = vmMemDriver{}

// TestVMSandboxProvidersOnlyToRunner: the sandbox token alone (what a VM guest holds)
// gets PERMISSION_DENIED and no value; the token plus the sandbox's runner credential
// gets the values; another sandbox's runner credential, or one from another key, does
// not.
func TestVMSandboxProvidersOnlyToRunner(t *testing.T) {
	dir := t.TempDir()
	box, err := secrets.LoadOrCreate(filepath.Join(dir, secrets.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	key := []byte("0123456789abcdef0123456789abcdef")
	e := startEnvWith(t, dir, drivertest.NewMemDriver(), 200*time.Millisecond, func(o *gateway.Options) {
		o.Secrets = box
		o.Driver = vmMemDriver{MemDriver: o.Driver.(*drivertest.MemDriver), key: key}
	})
	ctx := context.Background()
	createGitHubProvider(t, e.user)
	id := e.create("agent", "github").GetMetadata().GetId()
	other := e.create("other").GetMetadata().GetId()
	tok, err := e.issuer.Mint(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := e.client(&tls.Config{RootCAs: e.bundle.CertPool(), MinVersion: tls.VersionTLS13}, tok)
	ask := func(cred string) (*openshellv1.GetSandboxProviderEnvironmentResponse, error) {
		cctx := ctx
		if cred != "" {
			cctx = metadata.AppendToOutgoingContext(ctx, hostcred.MetadataKey, cred)
		}
		return c.GetSandboxProviderEnvironment(cctx, envReq(id))
	}
	for _, tc := range []struct{ name, cred string }{
		{"token only (the guest)", ""},
		{"another sandbox's runner credential", hostcred.Derive(key, other)},
		{"credential from another key", hostcred.Derive([]byte("fedcba9876543210fedcba9876543210"), id)},
		{"garbage", strings.Repeat("0", 64)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ask(tc.cred)
			wantCode(t, err, codes.PermissionDenied)
			if strings.Contains(got.String(), ghSecret) {
				t.Fatal("a real value was returned")
			}
			if !strings.Contains(err.Error(), "runner") {
				t.Errorf("the refusal does not say who gets the values: %v", err)
			}
		})
	}
	got, err := ask(hostcred.Derive(key, id))
	if err != nil {
		t.Fatalf("the runner credential was refused: %v", err)
	}
	if ps := decodeEnv(t, got); len(ps) != 1 || ps[0].Credentials["GITHUB_TOKEN"] != ghSecret {
		t.Fatalf("runner got %v", got)
	}
}

// attachedVMDriver reports itself as the VM driver but gives the gateway no runner
// key (a VM driver attached with --compute-driver-socket).
type attachedVMDriver struct{ *drivertest.MemDriver }

func (d attachedVMDriver) Capabilities(ctx context.Context) (*computev1.GetCapabilitiesResponse, error) {
	c, err := d.MemDriver.Capabilities(ctx)
	if err != nil {
		return nil, err
	}
	c.DriverName = "vm"
	return c, nil
}

// TestAttachedVMDriverGetsNoValues: without a runner key the gateway cannot tell a
// VM's runner from its guest, so nobody gets the values of a VM sandbox.
func TestAttachedVMDriverGetsNoValues(t *testing.T) {
	dir := t.TempDir()
	box, err := secrets.LoadOrCreate(filepath.Join(dir, secrets.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	e := startEnvWith(t, dir, drivertest.NewMemDriver(), 200*time.Millisecond, func(o *gateway.Options) {
		o.Secrets = box
		o.Driver = attachedVMDriver{o.Driver.(*drivertest.MemDriver)}
	})
	ctx := context.Background()
	createGitHubProvider(t, e.user)
	id := e.create("agent", "github").GetMetadata().GetId()
	cctx := metadata.AppendToOutgoingContext(ctx, hostcred.MetadataKey, hostcred.Derive(nil, id))
	got, err := e.sandboxClient(id).GetSandboxProviderEnvironment(cctx, envReq(id))
	wantCode(t, err, codes.PermissionDenied)
	if strings.Contains(got.String(), ghSecret) || !strings.Contains(err.Error(), "no runner key") {
		t.Fatalf("answer %v, %v", got, err)
	}
}
