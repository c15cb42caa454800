package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestTransferSpeed measures `sandbox upload/download` (a tar stream written by the
// supervisor as the sandbox user). Docker driver: 256 MiB in one file and a tree of
// 10,000 small files, each against `docker cp` in the same run, printed side by side
// with the ratio (openshell time / docker cp time; ≤ 1 is the target). VM driver:
// 256 MiB upload and download in MiB/s. Each figure is the median of
// OPENSHELL_BENCH_RUNS runs (default 3; openshell and docker cp alternate), since the
// host's cores are shared and one run swings by half. Runs with OPENSHELL_BENCH=1
// (scripts/bench.sh transfer).
func TestTransferSpeed(t *testing.T) {
	if os.Getenv("OPENSHELL_BENCH") != "1" {
		t.Skip("benchmark: set OPENSHELL_BENCH=1")
	}
	if driver() != "docker" && driver() != "vm" {
		t.Skip("docker (vs docker cp) and vm (MiB/s) only")
	}
	h := newHarness(t)
	box := uniqueName("xfer")
	h.create(box, "sleep", "1000000")

	one := filepath.Join(t.TempDir(), "one")
	if err := os.MkdirAll(one, 0o755); err != nil {
		t.Fatal(err)
	}
	blob := filepath.Join(one, "blob.bin")
	f, err := os.Create(blob)
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB, not all zeros
	for i := 0; i < 256; i++ {
		if _, err := f.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	timed := func(f func()) time.Duration {
		start := time.Now()
		f()
		return time.Since(start)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Minute)
	defer cancel()

	runs := 3
	if n, err := strconv.Atoi(os.Getenv("OPENSHELL_BENCH_RUNS")); err == nil && n > 0 {
		runs = n
	}
	// median runs f runs times and returns the median time and all of them.
	median := func(fs ...func()) [][]time.Duration {
		out := make([][]time.Duration, len(fs))
		for range runs {
			for i, f := range fs {
				out[i] = append(out[i], timed(f))
			}
		}
		return out
	}
	mid := func(ds []time.Duration) time.Duration {
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[len(s)/2]
	}
	all := func(ds []time.Duration) string {
		var b strings.Builder
		for i, d := range ds {
			if i > 0 {
				b.WriteString(" ")
			}
			fmt.Fprintf(&b, "%.2f", d.Seconds())
		}
		return b.String()
	}

	if driver() == "vm" {
		dl := t.TempDir()
		ts := median(
			func() { h.mustRun(t, "sandbox", "upload", box, blob, "/tmp/blob.bin") },
			func() {
				h.mustRun(t, "sandbox", "download", box, "/tmp/blob.bin", filepath.Join(dl, "blob.bin"))
				if st, err := os.Stat(filepath.Join(dl, "blob.bin")); err != nil || st.Size() != 256<<20 {
					t.Fatalf("downloaded blob: %v %v", st, err)
				}
				os.Remove(filepath.Join(dl, "blob.bin"))
			})
		up, down := mid(ts[0]), mid(ts[1])
		fmt.Printf("vm transfer 256 MiB (median of %d): upload %v (%.1f MiB/s) | download %v (%.1f MiB/s) | target ≥ 45 MiB/s\n",
			runs, up.Round(time.Millisecond), 256/up.Seconds(), down.Round(time.Millisecond), 256/down.Seconds())
		fmt.Printf("  runs (s): upload %s | download %s\n", all(ts[0]), all(ts[1]))
		return
	}

	tree := filepath.Join(t.TempDir(), "tree")
	const nSmall, smallSize = 10000, 4 << 10
	for i := 0; i < nSmall; i++ {
		p := filepath.Join(tree, fmt.Sprintf("d%02d", i/100), fmt.Sprintf("f%04d.txt", i))
		if i%100 == 0 {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(p, chunk[:smallSize], 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cid := containerID(t, box)
	dockerCp := func(from, to string) {
		if out, err := exec.CommandContext(ctx, "docker", "cp", from, to).CombinedOutput(); err != nil {
			t.Fatalf("docker cp %s %s: %v %s", from, to, err, out)
		}
	}
	// Where one 256 MiB upload's CPU goes, each way: the client process, the server
	// (the gateway, or dockerd with the untar it runs for docker cp) and the
	// sandbox's container (supervisor and tar server, or nothing for docker cp).
	profile := func(name string, argv []string, server int) {
		c0, s0 := boxCPU(t, cid), procCPU(t, server)
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Env = h.env
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", argv, err, out)
		}
		wall := time.Since(start)
		client := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		fmt.Printf("cpu %-30s wall %6.2fs | client %5.2fs | server %5.2fs | container %5.2fs\n", name, wall.Seconds(),
			client.Seconds(), (procCPU(t, server) - s0).Seconds(), (boxCPU(t, cid) - c0).Seconds())
	}
	profile("upload 256 MiB (openshell)", []string{filepath.Join(h.bin, "openshell"), "sandbox", "upload", box, blob, "/tmp/prof-osh"}, h.gatewayPID())
	profile("upload 256 MiB (docker cp)", []string{"docker", "cp", blob, cid + ":/tmp/prof-cp"}, dockerdPID(t))

	for _, c := range []struct {
		name, src string
		mib       float64
	}{
		{"256 MiB, one file", blob, 256},
		{fmt.Sprintf("%d files of %d KiB", nSmall, smallSize>>10), tree, float64(nSmall*smallSize) / (1 << 20)},
	} {
		base := filepath.Base(c.src)
		dl := t.TempDir()
		// A new destination each run: nothing to merge into or overwrite.
		round := 0
		name := func(p string) string { return fmt.Sprintf("%s-%d", p, round) }
		var last string
		ts := median(
			func() { round++; h.mustRun(t, "sandbox", "upload", box, c.src, name("/tmp/osh-"+base)) },
			func() { dockerCp(c.src, cid+":"+name("/tmp/cp-"+base)) },
			func() {
				last = name(filepath.Join(dl, "osh"))
				h.mustRun(t, "sandbox", "download", box, name("/tmp/osh-"+base), last)
			},
			func() { dockerCp(cid+":"+name("/tmp/cp-"+base), name(filepath.Join(dl, "cp"))) },
		)
		up, cp, down, cpDown := mid(ts[0]), mid(ts[1]), mid(ts[2]), mid(ts[3])
		fmt.Printf("upload   %-22s openshell %8v (%6.1f MiB/s) | docker cp %8v (%6.1f MiB/s) | ratio %.2f (median of %d)\n", c.name,
			up.Round(time.Millisecond), c.mib/up.Seconds(), cp.Round(time.Millisecond), c.mib/cp.Seconds(), up.Seconds()/cp.Seconds(), runs)
		fmt.Printf("download %-22s openshell %8v (%6.1f MiB/s) | docker cp %8v (%6.1f MiB/s) | ratio %.2f (median of %d)\n", c.name,
			down.Round(time.Millisecond), c.mib/down.Seconds(), cpDown.Round(time.Millisecond), c.mib/cpDown.Seconds(), down.Seconds()/cpDown.Seconds(), runs)
		fmt.Printf("  runs (s): upload %s vs %s | download %s vs %s\n", all(ts[0]), all(ts[1]), all(ts[2]), all(ts[3]))
		if base == "tree" {
			n := 0
			_ = filepath.WalkDir(last, func(_ string, d os.DirEntry, err error) error {
				if err == nil && d.Type().IsRegular() {
					n++
				}
				return nil
			})
			if n != nSmall {
				t.Fatalf("downloaded tree has %d files, want %d", n, nSmall)
			}
		}
	}
}

// boxCPU is the CPU time container cid used so far (its cgroup's accounting; 0
// where neither cgroup layout is found).
func boxCPU(t *testing.T, cid string) time.Duration {
	// cid is the short id `docker ps -q` prints: the cgroup is named by the full one.
	if m, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/cpuacct/docker", cid+"*", "cpuacct.usage")); len(m) == 1 {
		if b, err := os.ReadFile(m[0]); err == nil {
			n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			return time.Duration(n)
		}
	}
	v2, _ := filepath.Glob("/sys/fs/cgroup/system.slice/docker-" + cid + "*.scope/cpu.stat")
	v2b, _ := filepath.Glob("/sys/fs/cgroup/docker/" + cid + "*/cpu.stat")
	for _, p := range append(v2, v2b...) {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				return time.Duration(n) * time.Microsecond
			}
		}
	}
	t.Logf("no cgroup CPU accounting found for container %s", cid)
	return 0
}
