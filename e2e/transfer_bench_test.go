package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestTransferSpeed measures `sandbox upload/download` (a tar stream written by the
// supervisor as the sandbox user). Docker driver: 256 MiB in one file and a tree of
// 10,000 small files, each against `docker cp` in the same run, printed side by side
// with the ratio (openshell time / docker cp time; ≤ 1 is the target). VM driver:
// 256 MiB upload and download in MiB/s. Runs with OPENSHELL_BENCH=1
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

	if driver() == "vm" {
		up := timed(func() { h.mustRun(t, "sandbox", "upload", box, blob, "/tmp/blob.bin") })
		dl := t.TempDir()
		down := timed(func() { h.mustRun(t, "sandbox", "download", box, "/tmp/blob.bin", filepath.Join(dl, "blob.bin")) })
		if st, err := os.Stat(filepath.Join(dl, "blob.bin")); err != nil || st.Size() != 256<<20 {
			t.Fatalf("downloaded blob: %v %v", st, err)
		}
		fmt.Printf("vm transfer 256 MiB: upload %v (%.1f MiB/s) | download %v (%.1f MiB/s) | target ≥ 45 MiB/s\n",
			up.Round(time.Millisecond), 256/up.Seconds(), down.Round(time.Millisecond), 256/down.Seconds())
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
	for _, c := range []struct {
		name, src string
		mib       float64
	}{
		{"256 MiB, one file", blob, 256},
		{fmt.Sprintf("%d files of %d KiB", nSmall, smallSize>>10), tree, float64(nSmall*smallSize) / (1 << 20)},
	} {
		base := filepath.Base(c.src)
		up := timed(func() { h.mustRun(t, "sandbox", "upload", box, c.src, "/tmp/osh-"+base) })
		cp := timed(func() { dockerCp(c.src, cid+":/tmp/cp-"+base) })
		dl := t.TempDir()
		down := timed(func() { h.mustRun(t, "sandbox", "download", box, "/tmp/osh-"+base, filepath.Join(dl, "osh")) })
		cpDown := timed(func() { dockerCp(cid+":/tmp/cp-"+base, filepath.Join(dl, "cp")) })
		fmt.Printf("upload   %-22s openshell %8v (%6.1f MiB/s) | docker cp %8v (%6.1f MiB/s) | ratio %.2f\n", c.name,
			up.Round(time.Millisecond), c.mib/up.Seconds(), cp.Round(time.Millisecond), c.mib/cp.Seconds(), up.Seconds()/cp.Seconds())
		fmt.Printf("download %-22s openshell %8v (%6.1f MiB/s) | docker cp %8v (%6.1f MiB/s) | ratio %.2f\n", c.name,
			down.Round(time.Millisecond), c.mib/down.Seconds(), cpDown.Round(time.Millisecond), c.mib/cpDown.Seconds(), down.Seconds()/cpDown.Seconds())
		if base == "tree" {
			n := 0
			_ = filepath.WalkDir(filepath.Join(dl, "osh"), func(_ string, d os.DirEntry, err error) error {
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
