package gpu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/openshell/openshell/internal/gpu/gputest"
)

// The helper process (this test binary re-executed) allocates GPUs as another driver
// process would: its own Manager, the same state dir and tree.
func TestMain(m *testing.M) {
	if mode := os.Getenv("GPU_TEST_HELPER"); mode != "" {
		os.Exit(helperMain(mode))
	}
	os.Exit(m.Run())
}

func helperMain(mode string) int {
	sys, state, owner := os.Getenv("GPU_SYS"), os.Getenv("GPU_STATE"), os.Getenv("GPU_OWNER")
	count, _ := strconv.Atoi(os.Getenv("GPU_COUNT"))
	stopAfter, _ := strconv.Atoi(os.Getenv("GPU_STOP_AFTER"))
	k := gputest.NewKernel(sys)
	m := New(Config{Sysfs: sys, Proc: "/nonexistent", StateDir: state, Write: k.Write})
	steps := 0
	if mode == "crash" && stopAfter > 0 {
		m.afterStep = func(bdf, step string) {
			steps++
			if steps == stopAfter {
				fmt.Printf("STOPPED after %s %s\n", step, bdf)
				time.Sleep(time.Hour) // killed here
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, err := m.Allocate(ctx, owner, Request{Count: count})
	if err != nil {
		fmt.Printf("ERR %v\n", err)
		return 0
	}
	b, _ := json.Marshal(a.GPUs())
	fmt.Printf("OK %s\n", b)
	if mode == "crash" {
		time.Sleep(time.Hour) // bound, the VMM not started yet: killed here
	}
	return 0
}

type fixture struct {
	dir, sys, state string
	k               *gputest.Kernel
	m               *Manager
}

func newFixture(t *testing.T, tree string) *fixture {
	t.Helper()
	dir := copyTree(t, tree)
	f := &fixture{dir: dir, sys: filepath.Join(dir, "sys"), state: filepath.Join(dir, "state")}
	f.k = gputest.NewKernel(f.sys)
	f.m = New(Config{Sysfs: f.sys, Proc: filepath.Join(dir, "proc"), StateDir: f.state, Write: f.k.Write})
	t.Cleanup(func() {
		if len(f.k.Unwanted()) > 0 {
			t.Errorf("writes the kernel would refuse: %v", f.k.Unwanted())
		}
	})
	return f
}

// drivers is each function's driver and driver_override as the tree shows them now.
func (f *fixture) drivers(t *testing.T) map[string]string {
	t.Helper()
	fns, err := (sysfs{root: f.sys}).functions()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, fn := range fns {
		out[fn.BDF] = fn.Driver + "|" + fn.Override
	}
	return out
}

func (f *fixture) journalEntries(t *testing.T) []entry {
	t.Helper()
	j, err := f.m.readJournal()
	if err != nil {
		t.Fatal(err)
	}
	return j.Entries
}

func TestScanRecordedHosts(t *testing.T) {
	type want struct {
		bdf         string
		passthrough bool
		reason      string // code of the first reason
		functions   []string
	}
	cases := []struct {
		tree, proc string
		iommu      bool
		gpus       []want
	}{
		{"single", "", true, []want{{"0000:01:00.0", true, "", []string{"0000:01:00.0", "0000:01:00.1"}}}},
		{"single", "proc-busy", true, []want{{"0000:01:00.0", false, ReasonInUse, nil}}},
		{"shared-nic", "", true, []want{
			{"0000:03:00.0", false, ReasonGroupShared, nil},
			{"0000:05:00.0", true, "", []string{"0000:05:00.0", "0000:05:00.1"}}}},
		{"no-iommu", "", false, []want{{"0000:0b:00.0", false, ReasonNoIOMMU, nil}}},
		{"h200", "proc", false, []want{{"0000:00:06.0", false, ReasonNoIOMMU, []string{"0000:00:06.0"}}}},
	}
	for _, tc := range cases {
		t.Run(tc.tree+"/"+tc.proc, func(t *testing.T) {
			proc := "/nonexistent"
			if tc.proc != "" {
				proc = filepath.Join("testdata", tc.tree, tc.proc)
			}
			inv, err := Scan(ScanOptions{Sysfs: filepath.Join("testdata", tc.tree, "sys"), Proc: proc})
			if err != nil {
				t.Fatal(err)
			}
			if inv.IOMMU != tc.iommu || len(inv.GPUs) != len(tc.gpus) {
				t.Fatalf("iommu=%v gpus=%d, want iommu=%v gpus=%d", inv.IOMMU, len(inv.GPUs), tc.iommu, len(tc.gpus))
			}
			for i, w := range tc.gpus {
				g := inv.GPUs[i]
				if g.BDF != w.bdf || g.Passthrough != w.passthrough {
					t.Errorf("gpu %d: %s passthrough=%v, want %s %v (%v)", i, g.BDF, g.Passthrough, w.bdf, w.passthrough, g.Reasons)
				}
				if w.reason != "" && (len(g.Reasons) == 0 || g.Reasons[0].Code != w.reason || g.Reasons[0].Fix == "") {
					t.Errorf("gpu %s reasons %+v, want first %s with a fix", g.BDF, g.Reasons, w.reason)
				}
				if w.functions != nil && !slices.Equal(g.Functions(), w.functions) {
					t.Errorf("gpu %s functions %v, want %v", g.BDF, g.Functions(), w.functions)
				}
			}
		})
	}
}

func TestScanH200(t *testing.T) {
	inv, err := Scan(ScanOptions{Sysfs: "testdata/h200/sys", Proc: "testdata/h200/proc"})
	if err != nil {
		t.Fatal(err)
	}
	g := inv.GPUs[0]
	if g.Class != 0x030200 || g.Vendor != 0x10de || g.Device != 0x2335 || g.Driver != "nvidia" || g.NUMANode != -1 {
		t.Errorf("H200 read as %+v", g.Function)
	}
	if got := g.MMIO64(); got != 256<<30+32<<20 {
		t.Errorf("MMIO64 = %d, want 256 GiB + 32 MiB", got)
	}
	if !strings.Contains(g.Reasons[0].Fix, "intel_iommu=on") || !strings.Contains(g.Reasons[0].Fix, "amd_iommu=on") {
		t.Errorf("fix %q does not say how to turn the IOMMU on", g.Reasons[0].Fix)
	}
}

func TestHGX8(t *testing.T) {
	inv, err := Scan(ScanOptions{Sysfs: "testdata/hgx8/sys", Proc: "/nonexistent"})
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.GPUs) != 8 {
		t.Fatalf("%d GPUs, want 8 (NVSwitches and NICs are not GPUs)", len(inv.GPUs))
	}
	for _, g := range inv.GPUs {
		if !g.Passthrough || len(g.Members) != 0 || g.MMIO64() != 128<<30+32<<20 {
			t.Errorf("%s passthrough=%v members=%v mmio=%d", g.BDF, g.Passthrough, g.Members, g.MMIO64())
		}
	}
	if inv.GPUs[0].NUMANode != 0 || inv.GPUs[7].NUMANode != 1 {
		t.Errorf("NUMA nodes %d/%d, want 0/1", inv.GPUs[0].NUMANode, inv.GPUs[7].NUMANode)
	}
}

// Listing GPUs reads and never writes: the tree is byte for byte the same afterwards
// and the write hook is never called.
func TestInventoryNeverWrites(t *testing.T) {
	for _, tree := range []string{"single", "hgx8", "shared-nic", "no-iommu", "h200"} {
		dir := copyTree(t, tree)
		before := snapshot(t, dir)
		m := New(Config{Sysfs: filepath.Join(dir, "sys"), Proc: filepath.Join(dir, "proc"), StateDir: filepath.Join(dir, "state"),
			Write: func(p string, _ []byte) error {
				t.Errorf("%s: write to %s while listing", tree, p)
				return errors.New("no")
			}})
		if _, err := m.Inventory(); err != nil {
			t.Fatal(err)
		}
		if after := snapshot(t, dir); !reflect.DeepEqual(before, after) {
			t.Errorf("%s: the tree changed while listing", tree)
		}
	}
}

func TestAllocateAndRelease(t *testing.T) {
	f := newFixture(t, "single")
	before := f.drivers(t)
	a, err := f.m.Allocate(t.Context(), "sb1", Request{Count: 1})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(a.BDFs(), []string{"0000:01:00.0", "0000:01:00.1"}) || !slices.Equal(a.GPUs(), []string{"0000:01:00.0"}) {
		t.Fatalf("allocation %+v", a)
	}
	now := f.drivers(t)
	for _, b := range a.BDFs() {
		if now[b] != "vfio-pci|vfio-pci" {
			t.Errorf("%s is %s, want vfio-pci with override", b, now[b])
		}
	}
	if now["0000:02:00.0"] != before["0000:02:00.0"] {
		t.Errorf("the NIC moved: %s", now["0000:02:00.0"])
	}
	inv, err := f.m.Inventory()
	if err != nil {
		t.Fatal(err)
	}
	if g, _ := inv.Find("0000:01:00.0"); g.HeldBy != "sb1" || g.Passthrough {
		t.Errorf("inventory shows %+v, want held by sb1", g)
	}
	again, err := f.m.Allocate(t.Context(), "sb1", Request{Count: 1})
	if err != nil || !reflect.DeepEqual(again, a) {
		t.Errorf("asking again: %+v, %v; want the same allocation", again, err)
	}
	if _, err := f.m.Allocate(t.Context(), "sb2", Request{Count: 1}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("second sandbox: %v, want ErrUnavailable", err)
	}
	if err := f.m.Release(t.Context(), "sb1"); err != nil {
		t.Fatal(err)
	}
	if after := f.drivers(t); !reflect.DeepEqual(after, before) {
		t.Errorf("after release %v, want %v", after, before)
	}
	if e := f.journalEntries(t); len(e) != 0 {
		t.Errorf("journal still has %v", e)
	}
}

func TestAllocateBadInput(t *testing.T) {
	cases := []struct {
		tree string
		req  Request
		is   error
		says []string
	}{
		{"single", Request{Devices: []string{"0000:09:00.0"}}, ErrInvalid, []string{"gpu device 0000:09:00.0", "no PCI device"}},
		{"single", Request{Devices: []string{"0000:02:00.0"}}, ErrInvalid, []string{"gpu device 0000:02:00.0", "Ethernet controller", "not a GPU"}},
		{"single", Request{Devices: []string{"1:2:3"}}, ErrInvalid, []string{"gpu device", "not a PCI address"}},
		{"single", Request{Devices: []string{"01:00.0", "0000:01:00.0"}}, ErrInvalid, []string{"listed twice"}},
		{"single", Request{Count: 0}, ErrInvalid, []string{"gpu count 0", "at least 1"}},
		{"single", Request{Count: -1}, ErrInvalid, []string{"gpu count -1"}},
		{"single", Request{Count: 2}, ErrUnavailable, []string{"gpu count 2", "1 GPU(s), 1 free"}},
		{"shared-nic", Request{Devices: []string{"0000:03:00.0"}}, ErrUnavailable, []string{"0000:04:00.0", "not a bridge", "ACS"}},
		{"no-iommu", Request{Count: 1}, ErrUnavailable, []string{"no IOMMU", "amd_iommu=on"}},
		{"h200", Request{Devices: []string{"0000:00:06.0"}}, ErrUnavailable, []string{"no IOMMU", "intel_iommu=on"}},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s/%v", tc.tree, tc.req), func(t *testing.T) {
			f := newFixture(t, tc.tree)
			before := f.drivers(t)
			_, err := f.m.Allocate(t.Context(), "sb", tc.req)
			if !errors.Is(err, tc.is) {
				t.Fatalf("err = %v, want %v", err, tc.is)
			}
			for _, s := range tc.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			if got := f.k.Log(); len(got) != 0 {
				t.Errorf("sysfs writes for a refused request: %v", got)
			}
			if !reflect.DeepEqual(f.drivers(t), before) {
				t.Error("devices moved")
			}
		})
	}
}

// A failure at any step of the binding puts every device already moved back on its
// driver, and leaves nothing journaled.
func TestRollbackHalfway(t *testing.T) {
	devs := []string{"0000:03:00.0", "0000:23:00.0", "0000:43:00.0", "0000:63:00.0"}
	for _, fail := range []struct{ op, bdf string }{
		{"override", devs[0]}, {"unbind", devs[2]}, {"bind", devs[2]}, {"bind", devs[3]},
	} {
		t.Run(fail.op+" "+fail.bdf, func(t *testing.T) {
			f := newFixture(t, "hgx8")
			before := f.drivers(t)
			f.k.FailAt(fail.op, fail.bdf)
			_, err := f.m.Allocate(t.Context(), "sb", Request{Devices: devs})
			if err == nil || !strings.Contains(err.Error(), fail.bdf) {
				t.Fatalf("err = %v, want a failure naming %s", err, fail.bdf)
			}
			if after := f.drivers(t); !reflect.DeepEqual(after, before) {
				for b := range before {
					if before[b] != after[b] {
						t.Errorf("%s: %s, was %s", b, after[b], before[b])
					}
				}
			}
			if e := f.journalEntries(t); len(e) != 0 {
				t.Errorf("journal keeps %v", e)
			}
			moved := 0
			for _, w := range f.k.Log() {
				if strings.Contains(w, "drivers/vfio-pci/bind") {
					moved++
				}
			}
			t.Logf("%d function(s) had reached vfio-pci before the failure; all back", moved)
		})
	}
}

func helper(t *testing.T, mode string, f *fixture, owner string, count, stopAfter int) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "GPU_TEST_HELPER="+mode, "GPU_SYS="+f.sys, "GPU_STATE="+f.state, "GPU_OWNER="+owner,
		"GPU_COUNT="+strconv.Itoa(count), "GPU_STOP_AFTER="+strconv.Itoa(stopAfter))
	cmd.Stderr = os.Stderr
	return cmd
}

// 20 processes ask at once for a GPU of an 8-GPU host: 8 get one each, nobody gets a
// GPU twice, 12 are told none is free.
func TestAllocateExclusiveAcrossProcesses(t *testing.T) {
	f := newFixture(t, "hgx8")
	const n = 20
	var wg sync.WaitGroup
	results := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := helper(t, "allocate", f, fmt.Sprintf("sb%02d", i), 1, 0).Output()
			if err != nil {
				t.Errorf("helper %d: %v", i, err)
			}
			results[i] = strings.TrimSpace(string(out))
		}()
	}
	wg.Wait()
	got := map[string]int{}
	ok, refused := 0, 0
	for i, r := range results {
		switch {
		case strings.HasPrefix(r, "OK "):
			var gpus []string
			if err := json.Unmarshal([]byte(r[3:]), &gpus); err != nil || len(gpus) != 1 {
				t.Fatalf("helper %d: %q", i, r)
			}
			got[gpus[0]]++
			ok++
		case strings.HasPrefix(r, "ERR ") && strings.Contains(r, "0 free"):
			refused++
		default:
			t.Errorf("helper %d: %q", i, r)
		}
	}
	if ok != 8 || refused != 12 || len(got) != 8 {
		t.Fatalf("%d allocated (%d distinct GPUs), %d refused; want 8, 8, 12", ok, len(got), refused)
	}
	owners := map[string]bool{}
	for _, e := range f.journalEntries(t) {
		if e.State != stateBound || owners[e.Owner] {
			t.Errorf("journal entry %+v", e)
		}
		owners[e.Owner] = true
	}
	for b, d := range f.drivers(t) {
		if _, mine := got[b]; mine != strings.HasPrefix(d, "vfio-pci") {
			t.Errorf("%s is on %s", b, d)
		}
	}
}

// A driver killed between binding and starting QEMU, or in the middle of binding,
// leaves the journal behind; the next start (Recover) puts every device back.
func TestCrashThenRecover(t *testing.T) {
	for _, tc := range []struct {
		name      string
		stopAfter int // sysfs steps before the kill; 0 = after the allocation completed
	}{
		{"bound, before QEMU start", 0},
		{"after unbinding the second GPU", 5},
		{"after the first override", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, "hgx8")
			before := f.drivers(t)
			cmd := helper(t, "crash", f, "sbcrash", 3, tc.stopAfter)
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			line, err := bufio.NewReader(out).ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			if tc.stopAfter == 0 != strings.HasPrefix(line, "OK ") {
				t.Fatalf("helper said %q", line)
			}
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			cmd.Wait()
			moved := 0
			for b, d := range f.drivers(t) {
				if d != before[b] {
					moved++
				}
			}
			if moved == 0 {
				t.Fatal("the helper moved nothing before it was killed")
			}
			if len(f.journalEntries(t)) == 0 {
				t.Fatal("nothing journaled before the kill")
			}
			m := New(Config{Sysfs: f.sys, StateDir: f.state, Write: f.k.Write, Proc: "/nonexistent"})
			back, err := m.Recover(t.Context(), func(string) bool { return false })
			if err != nil {
				t.Fatal(err)
			}
			if after := f.drivers(t); !reflect.DeepEqual(after, before) {
				t.Errorf("after recovery %v, want %v", after, before)
			}
			if len(back) == 0 || len(f.journalEntries(t)) != 0 {
				t.Errorf("recovered %v, journal %v", back, f.journalEntries(t))
			}
			t.Logf("%d function(s) had moved; recovered %v", moved, back)
		})
	}
}

func TestRecoverKeepsRunning(t *testing.T) {
	f := newFixture(t, "hgx8")
	if _, err := f.m.Allocate(t.Context(), "running", Request{Count: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Allocate(t.Context(), "gone", Request{Count: 1}); err != nil {
		t.Fatal(err)
	}
	back, err := f.m.Recover(t.Context(), func(o string) bool { return o == "running" })
	if err != nil || len(back) != 1 {
		t.Fatalf("recovered %v, %v; want the one GPU of the gone sandbox", back, err)
	}
	if a, ok, _ := f.m.Held("running"); !ok || len(a.GPUs()) != 2 {
		t.Errorf("running sandbox holds %+v", a)
	}
}

func TestMaxSandboxes(t *testing.T) {
	f := newFixture(t, "hgx8")
	for i := range 2 {
		if _, err := f.m.Allocate(t.Context(), fmt.Sprint("sb", i), Request{Count: 1, MaxSandboxes: 2}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := f.m.Allocate(t.Context(), "sb2", Request{Count: 1, MaxSandboxes: 2})
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "limit of 2 GPU sandboxes") {
		t.Fatalf("third sandbox: %v", err)
	}
}

func TestParseResource(t *testing.T) {
	b, err := os.ReadFile("testdata/h200/sys/devices/pci0000:00/0000:00:06.0/resource")
	if err != nil {
		t.Fatal(err)
	}
	bars, err := ParseResource(b)
	if err != nil || len(bars) != 3 {
		t.Fatalf("%v %v", bars, err)
	}
	if bars[1].Index != 1 || bars[1].Size != 256<<30 || !bars[1].Is64 || !bars[1].Prefetch || bars[0].Is64 {
		t.Errorf("bars %+v", bars)
	}
	for _, bad := range []string{"0x1 0x2\n", "zz 0x1 0x2\n", "0x10 0x1 0x200\n"} {
		if _, err := ParseResource([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func FuzzParseResource(f *testing.F) {
	for _, tree := range []string{"h200", "single"} {
		filepath.WalkDir(filepath.Join("testdata", tree, "sys", "devices"), func(p string, e os.DirEntry, err error) error {
			if err == nil && e.Name() == "resource" {
				b, _ := os.ReadFile(p)
				f.Add(b)
			}
			return nil
		})
	}
	f.Add([]byte("0x0 0xffffffffffffffff 0x14220c\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		bars, err := ParseResource(b)
		if err != nil {
			return
		}
		for _, bar := range bars {
			if bar.Index > 5 {
				t.Fatalf("BAR index %d", bar.Index)
			}
		}
	})
}

func FuzzParseBDF(f *testing.F) {
	for _, s := range []string{"0000:01:00.0", "01:00.1", "0000:00:1f.7", "../../x", "0000:01:00.0,x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := ParseBDF(s)
		if err != nil {
			return
		}
		if !bdfRE.MatchString(b) || strings.ContainsAny(b, "/,. ") && strings.Count(b, ".") != 1 {
			t.Fatalf("%q -> %q", s, b)
		}
	})
}

func FuzzParseJournal(f *testing.F) {
	f.Add([]byte(`{"version":1,"entries":[{"bdf":"0000:01:00.0","owner":"sb","driver":"nvidia","state":"bound","gpu":true}]}`))
	f.Add([]byte(`{"version":1,"entries":[{"bdf":"0000:01:00.0","owner":"sb","driver":"../../x","state":"bound"}]}`))
	f.Add([]byte(`{"version":2}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		j, err := ParseJournal(b)
		if err != nil {
			return
		}
		for _, e := range j.Entries {
			if !bdfRE.MatchString(e.BDF) || strings.Contains(e.Driver, "/") || e.Owner == "" {
				t.Fatalf("accepted %+v", e)
			}
		}
	})
}

// Two drivers on one host share the journal; neither puts back the other's devices.
func TestScopesKeepApart(t *testing.T) {
	f := newFixture(t, "hgx8")
	a := New(Config{Sysfs: f.sys, Proc: "/nonexistent", StateDir: f.state, Write: f.k.Write, Scope: "/var/a"})
	b := New(Config{Sysfs: f.sys, Proc: "/nonexistent", StateDir: f.state, Write: f.k.Write, Scope: "/var/b"})
	got, err := a.Allocate(t.Context(), "sb", Request{Count: 2})
	if err != nil {
		t.Fatal(err)
	}
	if back, err := b.Recover(t.Context(), func(string) bool { return false }); err != nil || len(back) != 0 {
		t.Fatalf("the other scope recovered %v, %v", back, err)
	}
	if err := b.Release(t.Context(), "sb"); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := b.Held("sb"); ok {
		t.Error("the other scope sees sb's devices as its own")
	}
	if h, ok, _ := a.Held("sb"); !ok || !reflect.DeepEqual(h, got) {
		t.Errorf("sb holds %+v, want %+v", h, got)
	}
	if _, err := b.Allocate(t.Context(), "sb", Request{Count: 7}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("the other scope got GPUs already held: %v", err)
	}
	if back, err := a.Recover(t.Context(), func(string) bool { return false }); err != nil || len(back) != 2 {
		t.Errorf("own scope recovered %v, %v", back, err)
	}
}

// Without a journal, Release and Recover create nothing (a host without GPUs).
func TestNoJournalNoState(t *testing.T) {
	dir := t.TempDir()
	m := New(Config{Sysfs: "testdata/single/sys", StateDir: filepath.Join(dir, "gpu"),
		Write: func(string, []byte) error { return errors.New("no writes expected") }})
	if err := m.Release(t.Context(), "x"); err != nil {
		t.Fatal(err)
	}
	if back, err := m.Recover(t.Context(), func(string) bool { return false }); err != nil || back != nil {
		t.Fatal(back, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "gpu")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state dir created: %v", err)
	}
}

func TestInventoryCheck(t *testing.T) {
	for _, tc := range []struct {
		tree string
		r    Request
		is   error
		says string
	}{
		{"single", Request{Count: 1}, nil, ""},
		{"single", Request{Count: 2}, ErrInvalid, "this host has 1 GPU(s)"},
		{"single", Request{Devices: []string{"0000:02:00.0"}}, ErrInvalid, "not a GPU"},
		{"single", Request{Devices: []string{"0000:7f:00.0"}}, ErrInvalid, "no PCI device"},
		{"single", Request{Count: 0}, ErrInvalid, "at least 1"},
		{"h200", Request{Count: 1}, ErrUnavailable, "intel_iommu=on"},
	} {
		inv, err := Scan(ScanOptions{Sysfs: filepath.Join("testdata", tc.tree, "sys"), Proc: "/nonexistent"})
		if err != nil {
			t.Fatal(err)
		}
		err = inv.Check(tc.r)
		if tc.is == nil && err != nil || tc.is != nil && (!errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.says)) {
			t.Errorf("%s %+v: %v, want %v saying %q", tc.tree, tc.r, err, tc.is, tc.says)
		}
	}
}

// A device the kernel will not take back stays journaled (and reported); Recover at
// the next start (the sandbox's VM is gone) puts it back.
func TestReleaseFailureStaysJournaled(t *testing.T) {
	f := newFixture(t, "single")
	before := f.drivers(t)
	if _, err := f.m.Allocate(t.Context(), "sb", Request{Count: 1}); err != nil {
		t.Fatal(err)
	}
	f.k.FailAt("bind", "0000:01:00.1")
	err := f.m.Release(t.Context(), "sb")
	if err == nil || !strings.Contains(err.Error(), "0000:01:00.1") || !strings.Contains(err.Error(), "snd_hda_intel") {
		t.Fatalf("Release = %v, want a failure naming the audio function and its driver", err)
	}
	e := f.journalEntries(t)
	if len(e) != 1 || e[0].BDF != "0000:01:00.1" {
		t.Fatalf("journal %+v, want only the function that failed", e)
	}
	if back, err := f.m.Recover(t.Context(), func(string) bool { return false }); err != nil || !slices.Equal(back, []string{"0000:01:00.1"}) {
		t.Fatalf("Recover = %v, %v", back, err)
	}
	if after := f.drivers(t); !reflect.DeepEqual(after, before) {
		t.Errorf("after recovery %v, want %v", after, before)
	}
}

// A GPU whose IOMMU group another VMM has open (/dev/vfio/N) is in use.
func TestVFIOGroupOpenIsInUse(t *testing.T) {
	proc := t.TempDir()
	fd := filepath.Join(proc, "777", "fd")
	if err := os.MkdirAll(fd, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(proc, "777", "comm"), []byte("qemu-system-x86\n"), 0o644)
	if err := os.Symlink("/dev/vfio/13", filepath.Join(fd, "5")); err != nil {
		t.Fatal(err)
	}
	inv, err := Scan(ScanOptions{Sysfs: "testdata/single/sys", Proc: proc})
	if err != nil {
		t.Fatal(err)
	}
	g := inv.GPUs[0]
	if g.Passthrough || g.Reasons[0].Code != ReasonInUse || !strings.Contains(g.Reasons[0].Message, "777 (qemu-system-x86) has /dev/vfio/13 open") {
		t.Errorf("%+v", g.Reasons)
	}
}

// The attribute files of a function come from the kernel, but a tree handed to
// --sysfs-root may hold anything: reading must fail cleanly, never panic.
func FuzzFunctionAttributes(f *testing.F) {
	f.Add("0x030200\n", "0x10de\n", "0x2335\n", "-1\n", "(null)\n", "0x0 0x0 0x0\n")
	f.Add("0x040300", "0x10de", "0x22ba", "0", "vfio-pci", "0x1000 0x1fff 0x40200\n")
	f.Add("zz", "0x1ffff", "", "x", "", "0x1 0x0 0x0\n")
	f.Fuzz(func(t *testing.T, class, vendor, device, numa, override, resource string) {
		sys := t.TempDir()
		dev := filepath.Join(sys, "devices", "pci0000:00", "0000:00:06.0")
		os.MkdirAll(dev, 0o755)
		for name, v := range map[string]string{"class": class, "vendor": vendor, "device": device, "numa_node": numa, "driver_override": override, "resource": resource} {
			os.WriteFile(filepath.Join(dev, name), []byte(v), 0o644)
		}
		os.MkdirAll(filepath.Join(sys, "bus", "pci", "devices"), 0o755)
		os.Symlink("../../../devices/pci0000:00/0000:00:06.0", filepath.Join(sys, "bus", "pci", "devices", "0000:00:06.0"))
		inv, err := Scan(ScanOptions{Sysfs: sys, Proc: "/nonexistent"})
		if err != nil {
			return
		}
		for _, g := range inv.GPUs {
			if !g.IsGPU() || g.Passthrough {
				t.Fatalf("%+v", g)
			}
		}
	})
}
