package vm_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// cliPool is the part of a pool in `openshell pool list -o json` this test reads.
type cliPool struct {
	Name      string `json:"name"`
	Source    string `json:"source"`
	Size      int    `json:"size"`
	Idle      int    `json:"idle"`
	MemoryMiB int    `json:"memory_mib"`
	DiskBytes string `json:"disk_size_bytes"` // an int64 in protobuf's JSON: a string
}

// cliPools lists the gateway's pools through the CLI.
func (r *vmRun) cliPools() map[string]cliPool {
	r.t.Helper()
	var v struct {
		Pools []cliPool `json:"pools"`
	}
	out := r.cli("pool", "list", "-o", "json")
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		r.t.Fatalf("pool list -o json: %v: %s", err, out)
	}
	m := map[string]cliPool{}
	for _, p := range v.Pools {
		m[p.Name] = p
	}
	return m
}

// TestVMPoolCLI makes warm pools with `openshell pool create` on a gateway whose
// config has one pool, off, against real QEMU guests (TCG here):
//   - bad input is refused with the field named, and nothing is made;
//   - `pool create --wait` returns once the pool's VM waits; `pool list` shows it;
//   - a create of the pool's shape (through the CLI, the same --from and --memory)
//     takes the pooled VM; a second pool of the same shape is refused;
//   - gateway and driver killed with SIGKILL: the pool is still there (the driver
//     keeps it on disk) and its idle VM is re-adopted (the same runner process);
//   - `pool delete` stops the idle VM and leaves the sandbox that took one running;
//     the config's pools cannot be deleted through it; a pool deleted while its VM
//     boots leaves nothing running or on disk once that boot ends.
func TestVMPoolCLI(t *testing.T) {
	r := startVMRunWith(t, func(image string) string {
		return fmt.Sprintf("\n[drivers.vm.pools.conf]\nsize = 0\nimage = %q\n", image) // a pool of the config, off
	})

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"pool", "create", "p", "--image", r.image}, "--size"},
		{[]string{"pool", "create", "p", "--image", r.image, "--size", "0"}, "size 0: use 1 to 64"},
		{[]string{"pool", "create", "Bad_Name", "--image", r.image, "--size", "1"}, "pool name"},
		{[]string{"pool", "create", "p", "--image", r.image, "--memory", "64Mi", "--size", "1"}, "at least 128"},
		{[]string{"pool", "create", "p", "--image", r.image, "--cpu", "lots", "--size", "1"}, "cpu"},
		{[]string{"pool", "create", "p", "--image", r.image, "--disk-size", "10Mi", "--size", "1"}, "disk size \"10Mi\": use at least 64Mi"},
		{[]string{"pool", "create", "p", "--image", "oci-layout:" + filepath.Join(r.tmp, "nothing") + ":x", "--size", "1"}, "unknown image"},
		{[]string{"pool", "create", "conf", "--image", r.image, "--size", "1"}, "defined in the gateway config"},
		{[]string{"pool", "delete", "conf"}, "defined in the gateway config"},
		{[]string{"pool", "delete", "nope"}, "no such pool"},
	} {
		out, err := r.run(c.args...)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("openshell %s: %v, output %q; want an error with %q", strings.Join(c.args, " "), err, out, c.want)
		}
	}
	if ps := r.cliPools(); len(ps) != 1 || ps["conf"].Source != "config" {
		t.Fatalf("after refused creates, pools %+v: want only the config's", ps)
	}

	const pool = "cli"
	// A shape of its own, the disk included: only creates that ask for it match.
	out := r.cli("pool", "create", pool, "--image", r.image, "--memory", "256Mi", "--disk-size", "1Gi", "--size", "1", "--wait", "-o", "json")
	var created cliPool
	// The progress lines (stderr) come first.
	if i := strings.Index(out, "\n{"); i >= 0 {
		out = out[i+1:]
	}
	if err := json.Unmarshal([]byte(out), &created); err != nil || created.Name != pool || created.Source != "api" || created.Idle != 1 || created.MemoryMiB != 256 || created.DiskBytes != "1073741824" {
		t.Fatalf("pool create --wait -o json: %+v (%v): %s", created, err, out)
	}
	if b, err := os.ReadFile(filepath.Join(r.gwState, "vm-driver", "pools.json")); err != nil || !strings.Contains(string(b), `"`+pool+`"`) {
		t.Fatalf("the driver's pools.json: %v %s", err, b)
	}
	if out, err := r.run("pool", "create", "again", "--image", r.image, "--memory", "256Mi", "--disk-size", "1Gi", "--size", "1"); err == nil || !strings.Contains(out, `pool "cli" has the same image`) {
		t.Errorf("a second pool of the same shape: %v %q", err, out)
	}

	const sb = "from-cli-pool"
	r.cli("sandbox", "create", "--name", sb, "--from", r.image, "--memory", "256Mi", "--disk-size", "1Gi", "--timeout", cliTimeout.String(), "--", "sleep", "100000")
	if fp := r.fromPool(sb); fp != pool {
		t.Fatalf("sandbox %s of the pool's shape (--disk-size 1Gi): from pool %q, want %q", sb, fp, pool)
	}

	// kill -9 with the refilled pool: the pool and its VM survive.
	r.waitIdle(pool, 1, 6*time.Minute)
	before := r.idleRunners()
	r.kill9GatewayAndDriver()
	r.startGateway()
	if p := r.cliPools()[pool]; p.Source != "api" || p.Size != 1 {
		t.Fatalf("after the restart, pool %s: %+v", pool, p)
	}
	r.waitIdle(pool, 1, time.Minute)
	if after := r.idleRunners(); len(before) != 1 || !slices.Equal(before, after) {
		t.Errorf("idle pool runners before the kill %v, after the restart %v: not re-adopted", before, after)
	}

	out = r.cli("pool", "delete", pool)
	if !strings.Contains(out, "1 VMs stopped") {
		t.Errorf("pool delete: %q", out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for alive(before[0]) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if alive(before[0]) {
		t.Errorf("the deleted pool's idle VM (runner %d) still runs", before[0])
	}
	if _, ok := r.cliPools()[pool]; ok {
		t.Errorf("pool %s listed after its delete", pool)
	}
	// Its supervisor redials the restarted gateway on its own schedule (a second or
	// more under load); the gateway holds the exec until it is back.
	if got := r.execIn(sb, "echo", "still-here"); strings.TrimSpace(got) != "still-here" {
		t.Errorf("the sandbox that took the deleted pool's VM: %q", got)
	}
	r.deleteAndWaitGone(sb, 2*time.Minute)

	// A pool deleted while its first VM boots: that VM is stopped once its boot ends,
	// and nothing of the pool stays on disk.
	r.cli("pool", "create", "brief", "--image", r.image, "--memory", "300Mi", "--size", "2")
	time.Sleep(300 * time.Millisecond)
	if out := r.cli("pool", "delete", "brief"); !strings.Contains(out, "(1 VMs stopped)") {
		t.Errorf("pool delete brief while its VM boots: %q", out)
	}
	left := func() []string {
		var dirs []string
		files, _ := filepath.Glob(filepath.Join(r.gwState, "vm-driver", "sb", "*", "pool.json"))
		for _, f := range files {
			if b, err := os.ReadFile(f); err == nil && strings.Contains(string(b), `"pool":"brief"`) {
				dirs = append(dirs, filepath.Dir(f))
			}
		}
		return dirs
	}
	booting := left()
	if len(booting) != 1 {
		t.Errorf("right after its delete, pool brief has %v on disk: want its one VM still booting", booting)
	}
	for deadline := time.Now().Add(2 * time.Minute); len(left()) > 0 && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
	}
	if dirs := left(); len(dirs) > 0 {
		t.Errorf("VMs of the deleted pool brief left behind: %v", dirs)
	}
	for _, dir := range booting {
		if procs := procsUnder(dir); len(procs) > 0 {
			t.Errorf("processes of the deleted pool's VM %s still run: %v", dir, procs)
		}
	}
	if _, ok := r.cliPools()["brief"]; ok {
		t.Errorf("pool brief listed after its delete")
	}
}
