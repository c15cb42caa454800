package gateway

// Snapshots of running sandboxes (the project's Snapshots service). The driver keeps
// the files and the manifest; the gateway checks the sandbox, scopes snapshots to the
// workspace of the sandbox they were taken from (a snapshot holds that sandbox's
// memory) and names them.

import (
	"context"
	"fmt"
	"sort"
	"time"

	"google.golang.org/grpc"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/api/snapshotv1"
	"github.com/openshell/openshell/drivers"
)

// snapshotTimeout bounds a snapshot: guest state and disk copied to local files.
const snapshotTimeout = 10 * time.Minute

// snapshotService serves snapshotv1.Snapshots with the gateway's store and driver.
type snapshotService struct {
	snapshotv1.UnimplementedSnapshotsServer
	s *Server
}

func (s *Server) registerSnapshots(r grpc.ServiceRegistrar) {
	snapshotv1.RegisterSnapshotsServer(r, &snapshotService{s: s})
}

// snapshotter is the driver's snapshot ability, or an error naming the fix.
func (s *Server) snapshotter() (drivers.Snapshotter, error) {
	sn, ok := s.drv.(drivers.Snapshotter)
	if !ok {
		return nil, fmt.Errorf("the %s driver cannot snapshot sandboxes (the vm driver can, on a backend that saves VMs): %w", s.opts.DriverName, drivers.ErrFailedPrecondition)
	}
	return sn, nil
}

func (g *snapshotService) CreateSnapshot(ctx context.Context, req *snapshotv1.CreateSnapshotRequest) (*snapshotv1.SnapshotResponse, error) {
	s := g.s
	if req.GetSandbox() == "" {
		return nil, invalidf("sandbox: name the running sandbox to snapshot")
	}
	name := req.GetName()
	if name == "" {
		name = req.GetSandbox() + "-" + time.Now().UTC().Format("20060102-150405")
	}
	if err := validSnapshotName(name); err != nil {
		return nil, err
	}
	r, err := s.loadByName(ctx, req.GetWorkspace(), req.GetSandbox())
	if err != nil {
		return nil, err
	}
	switch r.intent {
	case intentStopped, intentStopping:
		return nil, fmt.Errorf("sandbox %s is stopped: a snapshot is taken of a running sandbox; start it first: %w", req.GetSandbox(), drivers.ErrFailedPrecondition)
	case intentDeleting:
		return nil, fmt.Errorf("sandbox %s is being deleted: %w", req.GetSandbox(), drivers.ErrFailedPrecondition)
	}
	sn, err := s.snapshotter()
	if err != nil {
		return nil, err
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), snapshotTimeout)
	defer cancel()
	snap, err := sn.SaveSnapshot(dctx, &snapshotv1.SaveSnapshotRequest{
		SandboxId: r.id(), SandboxName: r.sb.GetMetadata().GetName(), Workspace: resolveWorkspace(req.GetWorkspace()), Name: name,
	})
	if err != nil {
		return nil, driverOpError(req.GetSandbox(), "snapshot", err)
	}
	return &snapshotv1.SnapshotResponse{Snapshot: snap}, nil
}

// snapshotsIn lists the driver's snapshots of workspace ws.
func (s *Server) snapshotsIn(ctx context.Context, ws string) ([]*snapshotv1.Snapshot, error) {
	sn, err := s.snapshotter()
	if err != nil {
		return nil, err
	}
	all, err := sn.ListSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	ws = resolveWorkspace(ws)
	var out []*snapshotv1.Snapshot
	for _, x := range all {
		if resolveWorkspace(x.GetWorkspace()) == ws {
			out = append(out, x)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetName() < out[j].GetName() })
	return out, nil
}

// findSnapshot returns the snapshot name of workspace ws, NotFound naming the fix.
func (s *Server) findSnapshot(ctx context.Context, ws, name string) (*snapshotv1.Snapshot, error) {
	l, err := s.snapshotsIn(ctx, ws)
	if err != nil {
		return nil, err
	}
	for _, x := range l {
		if x.GetName() == name {
			return x, nil
		}
	}
	return nil, fmt.Errorf("snapshot %q: no such snapshot in workspace %s (see `openshell snapshot list`): %w", name, resolveWorkspace(ws), drivers.ErrNotFound)
}

func (g *snapshotService) ListSnapshots(ctx context.Context, req *snapshotv1.ListSnapshotsRequest) (*snapshotv1.ListSnapshotsResponse, error) {
	l, err := g.s.snapshotsIn(ctx, req.GetWorkspace())
	if err != nil {
		return nil, err
	}
	return &snapshotv1.ListSnapshotsResponse{Snapshots: l}, nil
}

func (g *snapshotService) DeleteSnapshot(ctx context.Context, req *snapshotv1.DeleteSnapshotRequest) (*snapshotv1.DeleteSnapshotResponse, error) {
	if req.GetName() == "" {
		return nil, invalidf("name: name the snapshot to delete (see `openshell snapshot list`)")
	}
	if _, err := g.s.findSnapshot(ctx, req.GetWorkspace(), req.GetName()); err != nil {
		return nil, err
	}
	sn, err := g.s.snapshotter()
	if err != nil {
		return nil, err
	}
	freed, err := sn.DeleteSnapshot(ctx, req.GetName())
	if err != nil {
		return nil, err
	}
	return &snapshotv1.DeleteSnapshotResponse{Deleted: true, FreedBytes: freed}, nil
}

// validSnapshotName: a DNS label (it names a directory of the driver and appears in
// CLI output), like a sandbox name.
func validSnapshotName(name string) error {
	if len(name) > 63 {
		return invalidf("name %q: at most 63 characters", name)
	}
	for i, c := range name {
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' && i > 0 && i < len(name)-1
		if !ok {
			return invalidf("name %q: use lower-case letters, digits and '-' (not first or last), e.g. my-snap", name)
		}
	}
	return nil
}

// fromSnapshot checks a create from snapshot name of workspace ws and fills the
// image the snapshot was taken of. The sandbox's shape is the snapshot's: a
// different image or resources are refused.
func (s *Server) fromSnapshot(ctx context.Context, ws, name string, spec *openshellv1.SandboxSpec) error {
	sn, err := s.findSnapshot(ctx, ws, name)
	if err != nil {
		return err
	}
	if img := spec.GetTemplate().GetImage(); img != "" && img != sn.GetImage() {
		return invalidf("from_snapshot %q: the snapshot is of image %s, not %s: drop --from (the image comes with the snapshot)", name, sn.GetImage(), img)
	}
	if spec.GetTemplate().GetResources() != nil {
		return invalidf("from_snapshot %q: a sandbox from a snapshot has the snapshot's CPUs and memory (%d vCPUs, %d MiB): drop --cpu and --memory", name, sn.GetVcpus(), sn.GetMemoryMib())
	}
	spec.Template.Image = sn.GetImage()
	return nil
}
