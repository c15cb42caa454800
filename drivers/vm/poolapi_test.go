package vm_test

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/openshell/openshell/api/poolv1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/vm"
)

// TestPoolAPIRefusals: what CreatePool and DeletePool refuse, each with an error of
// the right kind that names the field or the fix, without writing pools.json; a
// pools.json that cannot be read is left as it is and the API's pools are refused
// until it is mended; a pool of the config wins over one of the file by the same name.
// (Pools that boot VMs: TestVMPoolCLI in e2e/vm.)
func TestPoolAPIRefusals(t *testing.T) {
	layout := t.TempDir()
	if err := os.WriteFile(filepath.Join(layout, "index.json"), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	image := "oci-layout:" + layout + ":t"
	dir := t.TempDir()
	cfg := vm.Config{StateDir: dir, GatewayEndpoint: "127.0.0.1:17670", DefaultImage: image,
		Pools: map[string]vm.PoolConfig{"conf": {Size: 0, MemoryMiB: 256}}}.WithDefaults()
	open := func() *vm.Driver {
		d, err := vm.New(cfg, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
		if err != nil {
			t.Fatalf("vm.New: %v", err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	}
	d := open()
	for _, c := range []struct {
		req  *poolv1.CreatePoolRequest
		kind error
		want string
	}{
		{&poolv1.CreatePoolRequest{Size: 1}, drivers.ErrInvalidArgument, "name: name the pool"},
		{&poolv1.CreatePoolRequest{Name: "p"}, drivers.ErrInvalidArgument, "size 0: use 1 to 64"},
		{&poolv1.CreatePoolRequest{Name: "p", Size: 65}, drivers.ErrInvalidArgument, "size 65"},
		{&poolv1.CreatePoolRequest{Name: "Bad/Name", Size: 1}, drivers.ErrInvalidArgument, "lowercase"},
		{&poolv1.CreatePoolRequest{Name: "p", Size: 1, Cpu: "many"}, drivers.ErrInvalidArgument, "cpu"},
		{&poolv1.CreatePoolRequest{Name: "p", Size: 1, Memory: "64Mi"}, drivers.ErrInvalidArgument, "at least 128"},
		{&poolv1.CreatePoolRequest{Name: "p", Size: 1, Memory: "lots"}, drivers.ErrInvalidArgument, "memory"},
		{&poolv1.CreatePoolRequest{Name: "p", Size: 1, DiskSize: "1Mi"}, drivers.ErrInvalidArgument, "disk_size"},
		{&poolv1.CreatePoolRequest{Name: "p", Size: 1, Image: "oci-layout:/nonexistent/layout:x"}, drivers.ErrInvalidArgument, "no OCI layout at /nonexistent/layout"},
		{&poolv1.CreatePoolRequest{Name: "conf", Size: 1}, drivers.ErrAlreadyExists, "defined in the gateway config"},
	} {
		_, err := d.CreatePool(t.Context(), c.req)
		if !errors.Is(err, c.kind) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("CreatePool(%v) = %v; want %v saying %q", c.req, err, c.kind, c.want)
		}
	}
	if _, err := d.DeletePool(t.Context(), "conf"); !errors.Is(err, drivers.ErrFailedPrecondition) || !strings.Contains(err.Error(), "[drivers.vm.pools.conf]") {
		t.Errorf("DeletePool of the config's pool: %v", err)
	}
	if _, err := d.DeletePool(t.Context(), "nope"); !errors.Is(err, drivers.ErrNotFound) {
		t.Errorf("DeletePool of no pool: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "pools.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused calls wrote pools.json: %v", err)
	}
	d.Close()

	// An unreadable pools.json: kept as it is, and the API refuses until it is mended.
	file := filepath.Join(dir, "pools.json")
	const garbage = "{not json"
	if err := os.WriteFile(file, []byte(garbage), 0o600); err != nil {
		t.Fatal(err)
	}
	d = open()
	if _, err := d.CreatePool(t.Context(), &poolv1.CreatePoolRequest{Name: "p", Size: 1}); !errors.Is(err, drivers.ErrFailedPrecondition) || !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), "mend it") {
		t.Errorf("CreatePool with an unreadable pools.json: %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != garbage {
		t.Errorf("the unreadable pools.json was rewritten: %q", b)
	}
	d.Close()

	// The config's pool wins over the file's of the same name.
	if err := os.WriteFile(file, []byte(`{"pools":{"conf":{"size":3}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	d = open()
	l, err := d.ListPools(t.Context())
	if err != nil || len(l) != 1 || l[0].GetName() != "conf" || l[0].GetSource() != vm.PoolSourceConfig || l[0].GetSize() != 0 || l[0].GetMemoryMib() != 256 {
		t.Errorf("ListPools with a clashing name in pools.json: %v, %v", l, err)
	}
}
