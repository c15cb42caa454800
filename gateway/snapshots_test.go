package gateway_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/api/snapshotv1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/gateway"
)

// snapshottingDriver is the in-memory driver with snapshots kept in a map (a test
// double of a driver that can snapshot; the VM driver's own tests boot real VMs).
type snapshottingDriver struct {
	*drivertest.MemDriver
	mu    sync.Mutex
	snaps map[string]*snapshotv1.Snapshot
}

var _ drivers.Snapshotter = (*snapshottingDriver)(nil)

func (d *snapshottingDriver) SaveSnapshot(ctx context.Context, req *snapshotv1.SaveSnapshotRequest) (*snapshotv1.Snapshot, error) {
	if _, err := d.Get(ctx, req.GetSandboxId(), ""); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.snaps[req.GetName()]; ok {
		return nil, fmt.Errorf("snapshot %q exists already: %w", req.GetName(), drivers.ErrAlreadyExists)
	}
	s := &snapshotv1.Snapshot{Name: req.GetName(), SourceSandboxId: req.GetSandboxId(), SourceSandboxName: req.GetSandboxName(), Workspace: req.GetWorkspace(), Bytes: 4096}
	d.snaps[req.GetName()] = s
	return s, nil
}

func (d *snapshottingDriver) ListSnapshots(context.Context) ([]*snapshotv1.Snapshot, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []*snapshotv1.Snapshot
	for _, s := range d.snaps {
		out = append(out, s)
	}
	return out, nil
}

func (d *snapshottingDriver) DeleteSnapshot(_ context.Context, name string) (int64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, ok := d.snaps[name]
	if !ok {
		return 0, fmt.Errorf("snapshot %q: %w", name, drivers.ErrNotFound)
	}
	delete(d.snaps, name)
	return s.GetBytes(), nil
}

func snapshotsClient(t *testing.T, e *env, tc *tls.Config) snapshotv1.SnapshotsClient {
	cc, err := grpc.NewClient("passthrough:///"+e.addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return snapshotv1.NewSnapshotsClient(cc)
}

// TestSnapshots: the Snapshots service names, checks and scopes snapshots: a default
// name from the sandbox, a taken name, a bad name, an unknown or stopped sandbox, a
// snapshot of another workspace (invisible, not deletable), delete; a driver that
// cannot snapshot is refused naming the driver; a sandbox token may not call it.
func TestSnapshots(t *testing.T) {
	drv := &snapshottingDriver{MemDriver: drivertest.NewMemDriver(), snaps: map[string]*snapshotv1.Snapshot{}}
	e := startEnvWith(t, t.TempDir(), drv.MemDriver, 200*time.Millisecond, func(o *gateway.Options) { o.Driver = drv })
	id := e.create("alpha").GetMetadata().GetId()
	e.connectSupervisor(id, "i1")
	e.waitPhase("alpha", phaseReady)
	c := snapshotsClient(t, e, e.bundle.ClientTLSConfig())
	ctx := t.Context()

	r, err := c.CreateSnapshot(ctx, &snapshotv1.CreateSnapshotRequest{Sandbox: "alpha"})
	if err != nil || !strings.HasPrefix(r.GetSnapshot().GetName(), "alpha-") || r.GetSnapshot().GetSourceSandboxId() != id || r.GetSnapshot().GetWorkspace() != "default" {
		t.Fatalf("CreateSnapshot with the default name: %v, %v", r, err)
	}
	if _, err := c.CreateSnapshot(ctx, &snapshotv1.CreateSnapshotRequest{Sandbox: "alpha", Name: "base"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		req  *snapshotv1.CreateSnapshotRequest
		code codes.Code
		say  string
	}{
		{"name taken", &snapshotv1.CreateSnapshotRequest{Sandbox: "alpha", Name: "base"}, codes.AlreadyExists, "exists already"},
		{"bad name", &snapshotv1.CreateSnapshotRequest{Sandbox: "alpha", Name: "Base_1"}, codes.InvalidArgument, "lower-case"},
		{"no sandbox", &snapshotv1.CreateSnapshotRequest{Name: "x"}, codes.InvalidArgument, "sandbox"},
		{"unknown sandbox", &snapshotv1.CreateSnapshotRequest{Sandbox: "nope", Name: "x"}, codes.NotFound, "nope"},
		{"other workspace", &snapshotv1.CreateSnapshotRequest{Sandbox: "alpha", Workspace: "other", Name: "x"}, codes.NotFound, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.CreateSnapshot(ctx, tc.req)
			wantCode(t, err, tc.code)
			if !strings.Contains(err.Error(), tc.say) {
				t.Fatalf("error %q does not say %q", err, tc.say)
			}
		})
	}
	l, err := c.ListSnapshots(ctx, &snapshotv1.ListSnapshotsRequest{})
	if err != nil || len(l.GetSnapshots()) != 2 || l.GetSnapshots()[1].GetName() != "base" {
		t.Fatalf("ListSnapshots: %v, %v", l, err)
	}
	if l, _ := c.ListSnapshots(ctx, &snapshotv1.ListSnapshotsRequest{Workspace: "other"}); len(l.GetSnapshots()) != 0 {
		t.Fatalf("another workspace sees %v", l.GetSnapshots())
	}
	_, err = c.DeleteSnapshot(ctx, &snapshotv1.DeleteSnapshotRequest{Name: "base", Workspace: "other"})
	wantCode(t, err, codes.NotFound)
	d, err := c.DeleteSnapshot(ctx, &snapshotv1.DeleteSnapshotRequest{Name: "base"})
	if err != nil || !d.GetDeleted() || d.GetFreedBytes() != 4096 {
		t.Fatalf("DeleteSnapshot: %v, %v", d, err)
	}
	_, err = c.DeleteSnapshot(ctx, &snapshotv1.DeleteSnapshotRequest{Name: "base"})
	wantCode(t, err, codes.NotFound)
	if !strings.Contains(err.Error(), "snapshot list") {
		t.Fatalf("unknown snapshot error %q: want it to point at snapshot list", err)
	}

	// Stopped sandboxes are refused before the driver is asked.
	if _, err := e.user.StopSandbox(ctx, &openshellv1.StopSandboxRequest{Name: "alpha"}); err != nil {
		t.Fatal(err)
	}
	_, err = c.CreateSnapshot(ctx, &snapshotv1.CreateSnapshotRequest{Sandbox: "alpha", Name: "later"})
	wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(err.Error(), "start it") {
		t.Fatalf("stopped sandbox refusal %q: want it to say start it", err)
	}

	// A sandbox token cannot call the user service.
	tok, err := e.issuer.Mint(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("passthrough:///"+e.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: e.bundle.CertPool(), MinVersion: tls.VersionTLS13})),
		grpc.WithPerRPCCredentials(bearer(tok)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	_, err = snapshotv1.NewSnapshotsClient(cc).ListSnapshots(ctx, &snapshotv1.ListSnapshotsRequest{})
	wantCode(t, err, codes.PermissionDenied)

	// A driver that cannot snapshot.
	plain := startEnv(t, t.TempDir(), drivertest.NewMemDriver())
	pid := plain.create("beta").GetMetadata().GetId()
	plain.connectSupervisor(pid, "i1")
	plain.waitPhase("beta", phaseReady)
	_, err = snapshotsClient(t, plain, plain.bundle.ClientTLSConfig()).CreateSnapshot(ctx, &snapshotv1.CreateSnapshotRequest{Sandbox: "beta", Name: "x"})
	wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(err.Error(), "cannot snapshot") || !strings.Contains(err.Error(), "vm driver") {
		t.Fatalf("refusal %q: want it to say the driver cannot snapshot and which can", err)
	}
}

// TestFromSnapshotKept: a sandbox created from a snapshot says so (status
// from_snapshot) in Get and List, and still does after a gateway restart; one created
// cold says nothing.
func TestFromSnapshotKept(t *testing.T) {
	dir := t.TempDir()
	drv := &snapshottingDriver{MemDriver: drivertest.NewMemDriver(), snaps: map[string]*snapshotv1.Snapshot{}}
	mod := func(o *gateway.Options) { o.Driver = drv }
	e := startEnvWith(t, dir, drv.MemDriver, 200*time.Millisecond, mod)
	id := e.create("alpha").GetMetadata().GetId()
	e.connectSupervisor(id, "i1")
	e.waitPhase("alpha", phaseReady)
	if _, err := snapshotsClient(t, e, e.bundle.ClientTLSConfig()).CreateSnapshot(t.Context(), &snapshotv1.CreateSnapshotRequest{Sandbox: "alpha", Name: "base"}); err != nil {
		t.Fatal(err)
	}
	drv.mu.Lock()
	drv.snaps["base"].Image = "test:1"
	drv.mu.Unlock()
	resp, err := e.user.CreateSandbox(t.Context(), &openshellv1.CreateSandboxRequest{Name: "copy", FromSnapshot: "base", Spec: &openshellv1.SandboxSpec{}})
	if err != nil || resp.GetSandbox().GetStatus().GetFromSnapshot() != "base" {
		t.Fatalf("create from snapshot base: %v, %v", resp.GetSandbox().GetStatus(), err)
	}
	if got := e.get("copy").GetStatus().GetFromSnapshot(); got != "base" {
		t.Fatalf("Get copy: from_snapshot %q; want base", got)
	}
	if got := e.get("alpha").GetStatus().GetFromSnapshot(); got != "" {
		t.Fatalf("Get alpha (created cold): from_snapshot %q; want none", got)
	}
	e.stop()
	e2 := startEnvWith(t, dir, drv.MemDriver, 200*time.Millisecond, mod)
	if got := e2.get("copy").GetStatus().GetFromSnapshot(); got != "base" {
		t.Fatalf("after a gateway restart, Get copy: from_snapshot %q; want base", got)
	}
	l, err := e2.user.ListSandboxes(t.Context(), &openshellv1.ListSandboxesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, sb := range l.GetSandboxes() {
		if want := map[string]string{"copy": "base"}[sb.GetMetadata().GetName()]; sb.GetStatus().GetFromSnapshot() != want {
			t.Fatalf("List after restart: %s from_snapshot %q; want %q", sb.GetMetadata().GetName(), sb.GetStatus().GetFromSnapshot(), want)
		}
	}
}
