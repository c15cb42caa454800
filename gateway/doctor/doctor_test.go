package doctor

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestVMCheck(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "driver")
	os.WriteFile(bin, []byte(`#!/bin/sh
echo '{"accel":"tcg","accel_reason":"no vmx","transport":"vhost-user-vsock","transport_reason":"no /dev/vhost-vsock","kernel":"/k/vmlinux","default_image":"img","missing":[{"what":"openshell-sandbox","fix":"make build"}],"pools":[{"name":"small","size":3,"idle":2,"booting":1,"image":"img","idle_rss_bytes":[297795584,297795584]}],"snapshots":{"count":2,"bytes":3145728}}'
exit 1
`), 0o755)
	got := VMCheck(func() (string, error) { return bin, nil })(context.Background())
	byCheck := map[string]Finding{}
	for _, f := range got {
		byCheck[f.Check] = f
	}
	if byCheck["vm.accel"].Detail != "tcg (no vmx)" || byCheck["vm.kernel"].Status != OK || byCheck["vm.supervisor"].Status != Warn ||
		!strings.Contains(byCheck["vm.vsock_transport"].Detail, "vhost-user-vsock") || byCheck["vm.missing"].Fix != "make build" ||
		byCheck["vm.pool.small"].Detail != "2 idle, 1 booting, size 3 (img); idle VMs' host RSS: 284 MiB, 284 MiB" ||
		byCheck["vm.snapshots"].Detail != "2 snapshots, 3.0 MiB on disk" {
		t.Fatalf("findings = %+v", got)
	}
	got = VMCheck(func() (string, error) { return "", errors.New("openshell-driver-vm not found") })(context.Background())
	if len(got) != 1 || got[0].Status != Warn {
		t.Fatalf("missing driver = %+v", got)
	}
	Register("zz-test", func(context.Context) []Finding { return []Finding{{Check: "zz", Status: Info}} })
	if all := Run(context.Background()); len(all) == 0 || all[len(all)-1].Check != "zz" {
		t.Fatalf("Run = %+v", all)
	}
}
