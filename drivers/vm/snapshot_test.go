package vm_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/api/snapshotv1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/vm"
)

// TestSnapshotSaveListDelete snapshots a running VM sandbox (virtio-serial channel):
// the snapshot's files are complete (device state, RAM and disk copies, the read-only
// files linked), the source runs on (the same guest reconnects), a name is taken
// once, a restarted driver lists the snapshot, delete frees its files; bad names,
// unknown and stopped sandboxes are refused with the right errors.
func TestSnapshotSaveListDelete(t *testing.T) {
	if testing.Short() {
		t.Skip("boots real VMs")
	}
	_, image := vmFixture(t)
	gw := newGatewayStub(t)
	dir := shortDir(t)
	cfg := testConfig(t, dir, gw.addr())
	cfg.Transport = "virtio-serial"
	d := newTestDriver(t, cfg)
	id := create(t, d, image)
	defer func() { d.Delete(context.Background(), id, "") }()
	first := gw.next(t, id, vmTimeout)
	waitFor(t, d, id, "Ready", ready)
	ctx := t.Context()
	mem := record(t, dir, id).MemoryMiB

	req := &snapshotv1.SaveSnapshotRequest{SandboxId: id, SandboxName: "src", Workspace: "ws1", Name: "base"}
	t0 := time.Now()
	sn, err := d.SaveSnapshot(ctx, req)
	if err != nil {
		t.Fatalf("SaveSnapshot: %v", err)
	}
	t.Logf("snapshot took %v, source paused %d ms, %d KiB on disk", time.Since(t0).Round(time.Millisecond), sn.GetPausedMs(), sn.GetBytes()>>10)
	if sn.GetName() != "base" || sn.GetSourceSandboxId() != id || sn.GetWorkspace() != "ws1" || int(sn.GetMemoryMib()) != mem || sn.GetVcpus() != 1 ||
		sn.GetBytes() <= 0 || sn.GetDiskSizeBytes() != 64<<20 || sn.GetImage() == "" || sn.GetCreatedAtMs() == 0 {
		t.Fatalf("snapshot %+v", sn)
	}
	snapDir := filepath.Join(dir, "snapshots", "base")
	for _, f := range []string{"manifest.json", "restore.json", "vm.state", "guest.ram", "disk.img", "image.img", "kernel", "initrd"} {
		fi, err := os.Stat(filepath.Join(snapDir, f))
		if err != nil || fi.Size() == 0 {
			t.Fatalf("snapshot file %s: %v", f, err)
		}
	}
	if fi, _ := os.Stat(filepath.Join(snapDir, "guest.ram")); fi.Size() != int64(mem)<<20 {
		t.Fatalf("guest.ram is %d bytes, want the guest's %d MiB", fi.Size(), mem)
	}
	var rec map[string]any
	b, _ := os.ReadFile(filepath.Join(snapDir, "restore.json"))
	if err := json.Unmarshal(b, &rec); err != nil || rec["instance_secret"] == "" || rec["source_sandbox_id"] != id {
		t.Fatalf("restore.json %s: %v", b, err)
	}
	if fi, _ := os.Stat(filepath.Join(snapDir, "restore.json")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("restore.json mode %v: it holds the guest's instance secret", fi.Mode())
	}

	// The source runs on: the same guest (boot id) reconnects after the pause.
	again := gw.next(t, id, vmTimeout)
	if again.BootID != first.BootID || again.Conn <= first.Conn {
		t.Fatalf("after the snapshot: boot %q conn %d; before: boot %q conn %d: want the same guest reconnecting", again.BootID, again.Conn, first.BootID, first.Conn)
	}
	waitFor(t, d, id, "Ready after the snapshot", ready)

	for _, tc := range []struct {
		name string
		req  *snapshotv1.SaveSnapshotRequest
		want error
		say  string
	}{
		{"name taken", req, drivers.ErrAlreadyExists, "exists already"},
		{"bad name", &snapshotv1.SaveSnapshotRequest{SandboxId: id, Name: "Bad_Name"}, drivers.ErrInvalidArgument, "lower-case"},
		{"dots", &snapshotv1.SaveSnapshotRequest{SandboxId: id, Name: ".."}, drivers.ErrInvalidArgument, "lower-case"},
		{"unknown sandbox", &snapshotv1.SaveSnapshotRequest{SandboxId: "no-such", Name: "x"}, drivers.ErrNotFound, "no-such"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := d.SaveSnapshot(ctx, tc.req)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.say) {
				t.Fatalf("SaveSnapshot: %v; want %v saying %q", err, tc.want, tc.say)
			}
		})
	}

	// A restarted driver finds the snapshot (it is files); a leftover partial one is
	// cleaned away and never listed.
	d.Close()
	if err := os.MkdirAll(filepath.Join(dir, "snapshots", "half"+".partial"), 0o700); err != nil {
		t.Fatal(err)
	}
	d = newTestDriver(t, cfg)
	defer d.Close()
	l, err := d.ListSnapshots(ctx)
	if err != nil || len(l) != 1 || l[0].GetName() != "base" || l[0].GetSourceSandboxName() != "src" {
		t.Fatalf("ListSnapshots after a driver restart: %v, %v", l, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "snapshots", "half.partial")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("partial snapshot left after a driver restart: %v", err)
	}

	// A stopped sandbox cannot be snapshotted.
	waitFor(t, d, id, "Ready after the driver restart", ready)
	if err := d.Stop(ctx, id, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := d.SaveSnapshot(ctx, &snapshotv1.SaveSnapshotRequest{SandboxId: id, Name: "later"}); !errors.Is(err, drivers.ErrFailedPrecondition) || !strings.Contains(err.Error(), "start it") {
		t.Fatalf("SaveSnapshot of a stopped sandbox: %v; want FailedPrecondition saying to start it", err)
	}

	freed, err := d.DeleteSnapshot(ctx, "base")
	if err != nil || freed < sn.GetBytes()/2 {
		t.Fatalf("DeleteSnapshot: freed %d (snapshot took %d), %v", freed, sn.GetBytes(), err)
	}
	if _, err := os.Stat(snapDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("snapshot dir after delete: %v", err)
	}
	if _, err := d.DeleteSnapshot(ctx, "base"); !errors.Is(err, drivers.ErrNotFound) {
		t.Fatalf("second DeleteSnapshot: %v; want NotFound", err)
	}
	if l, _ := d.ListSnapshots(ctx); len(l) != 0 {
		t.Fatalf("snapshots after delete: %v", l)
	}
}

// TestSnapshotRefused: a VM whose channel QEMU cannot migrate (vhost-user-vsock) is
// refused with FailedPrecondition naming the fix and runs on; nothing is left behind.
func TestSnapshotRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("boots real VMs")
	}
	_, image := vmFixture(t)
	gw := newGatewayStub(t)
	dir := shortDir(t)
	cfg := testConfig(t, dir, gw.addr())
	cfg.Transport = "vhost-user-vsock"
	d := newTestDriver(t, cfg)
	defer d.Close()
	id := create(t, d, image)
	defer d.Delete(context.Background(), id, "")
	if _, err := d.SaveSnapshot(t.Context(), &snapshotv1.SaveSnapshotRequest{SandboxId: id, Name: "early"}); !errors.Is(err, drivers.ErrFailedPrecondition) {
		t.Fatalf("SaveSnapshot while starting: %v; want FailedPrecondition", err)
	}
	gw.next(t, id, vmTimeout)
	waitFor(t, d, id, "Ready", ready)
	_, err := d.SaveSnapshot(t.Context(), &snapshotv1.SaveSnapshotRequest{SandboxId: id, Name: "nope"})
	if !errors.Is(err, drivers.ErrFailedPrecondition) || !strings.Contains(err.Error(), "virtio-serial") {
		t.Fatalf("SaveSnapshot over vhost-user-vsock: %v; want FailedPrecondition naming virtio-serial", err)
	}
	waitFor(t, d, id, "still Ready", ready)
	if ents, _ := os.ReadDir(filepath.Join(dir, "snapshots")); len(ents) != 0 {
		t.Fatalf("a refused snapshot left %v", ents)
	}
}

// TestSnapshotsOnDisk: doctor's count of a state dir's snapshots takes each snapshot
// directory with a manifest and its own bytes, and skips a partial one and a
// directory without a manifest; a state dir without snapshots has none.
func TestSnapshotsOnDisk(t *testing.T) {
	dir := t.TempDir()
	if u, err := vm.SnapshotsOnDisk(t.Context(), dir); err != nil || u.Count != 0 || u.Bytes != 0 {
		t.Fatalf("no snapshots dir: %+v, %v", u, err)
	}
	for name, files := range map[string]map[string]int{
		"base":         {"manifest.json": 0, "disk.img": 64 << 10},
		"other":        {"manifest.json": 0, "disk.img": 32 << 10},
		"half.partial": {"manifest.json": 0, "disk.img": 1 << 20},
		"junk":         {"disk.img": 1 << 20},
	} {
		d := filepath.Join(dir, "snapshots", name)
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		for f, n := range files {
			b := bytes.Repeat([]byte{1}, n)
			if f == "manifest.json" {
				b = []byte(`{"name":"` + name + `","image":"img"}`)
			}
			if err := os.WriteFile(filepath.Join(d, f), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	u, err := vm.SnapshotsOnDisk(t.Context(), dir)
	if err != nil || u.Count != 2 || u.Bytes < 96<<10 || u.Bytes > 1<<20 {
		t.Fatalf("SnapshotsOnDisk = %+v, %v; want 2 snapshots holding about 96 KiB", u, err)
	}
	if r := vm.Doctor(t.Context(), vm.Config{StateDir: dir}); r.Snapshots == nil || *r.Snapshots != u {
		t.Fatalf("Doctor's snapshots = %+v; want %+v", r.Snapshots, u)
	}
}
