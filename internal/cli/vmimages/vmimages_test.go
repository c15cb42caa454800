package vmimages

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/openshell/openshell/images"
	"github.com/openshell/openshell/internal/testenv"
)

func writeRandomLayout(t *testing.T, dir string) {
	t.Helper()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	img, err := random.Image(4096, 2)
	if err != nil {
		t.Fatal(err)
	}
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(img); err != nil {
		t.Fatal(err)
	}
}

func run(t *testing.T, cacheDir string, args ...string) string {
	t.Helper()
	cmd := Command()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(append([]string{"--cache-dir", cacheDir}, args...))
	if err := cmd.ExecuteContext(t.Context()); err != nil {
		t.Fatalf("images %v: %v\n%s", args, err, out.String())
	}
	return out.String()
}

func TestListAndPrune(t *testing.T) {
	testenv.RequireCommand(t, "mkfs.ext4", "apt-get install e2fsprogs")
	ctx := t.Context()
	tmp := t.TempDir()
	cacheDir := filepath.Join(tmp, "cache")
	c, err := images.NewCache(cacheDir)
	if err != nil {
		t.Fatal(err)
	}
	a, b := filepath.Join(tmp, "a"), filepath.Join(tmp, "b")
	writeRandomLayout(t, a)
	oldA, err := c.Ensure(ctx, "oci-layout:"+a, nil)
	if err != nil {
		t.Fatal(err)
	}
	writeRandomLayout(t, a) // the same reference now names a new image
	newA, err := c.Ensure(ctx, "oci-layout:"+a, nil)
	if err != nil {
		t.Fatal(err)
	}
	writeRandomLayout(t, b)
	eb, err := c.Ensure(ctx, "oci-layout:"+b, nil)
	if err != nil {
		t.Fatal(err)
	}
	release, err := c.Acquire(eb.Key)
	if err != nil {
		t.Fatal(err)
	}
	released := false
	defer func() {
		if !released {
			release()
		}
	}()

	var rows []row
	if err := json.Unmarshal([]byte(run(t, cacheDir, "list", "-o", "json")), &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) != 3 {
		t.Fatalf("list -o json: %d rows, want 3", len(rows))
	}
	for _, r := range rows {
		if r.InUse != (r.Key == eb.Key) || r.SizeBytes <= 0 || r.DiskPath == "" || r.CreatedAt.IsZero() {
			t.Errorf("row %+v", r)
		}
	}

	table := run(t, cacheDir, "list")
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "REF") || !strings.Contains(table, "MiB") ||
		!strings.Contains(table, oldA.Digest[:19]) || !strings.Contains(table, "yes") {
		t.Errorf("table output:\n%s", table)
	}

	dry := run(t, cacheDir, "prune", "--dry-run")
	if !strings.Contains(dry, "would remove oci-layout:"+a+" "+oldA.Digest[:19]) || strings.Contains(dry, newA.Digest[:19]) {
		t.Errorf("prune --dry-run:\n%s", dry)
	}
	if es, _ := c.List(); len(es) != 3 {
		t.Errorf("dry run removed entries: %d left", len(es))
	}

	out := run(t, cacheDir, "prune")
	if !strings.Contains(out, "1 image(s) removed") || !strings.Contains(out, oldA.Digest[:19]) {
		t.Errorf("prune:\n%s", out)
	}
	if _, err := c.Get(oldA.Key); err == nil {
		t.Error("superseded entry still there")
	}

	out = run(t, cacheDir, "prune", "--all", "--dry-run")
	if !strings.Contains(out, "would keep (in use) oci-layout:"+b) {
		t.Errorf("prune --all --dry-run:\n%s", out)
	}
	out = run(t, cacheDir, "prune", "--all")
	if !strings.Contains(out, "1 image(s) removed") || !strings.Contains(out, newA.Digest[:19]) {
		t.Errorf("prune --all:\n%s", out)
	}
	if _, err := c.Get(eb.Key); err != nil {
		t.Errorf("in-use entry was pruned: %v", err)
	}
	release()
	released = true
	out = run(t, cacheDir, "prune", "--all")
	if !strings.Contains(out, "1 image(s) removed") {
		t.Errorf("prune --all after release:\n%s", out)
	}
	if es, _ := c.List(); len(es) != 0 {
		t.Errorf("%d entries left", len(es))
	}
}

func TestListRejectsBadOutput(t *testing.T) {
	cmd := Command()
	cmd.SetOut(new(bytes.Buffer))
	cmd.SetErr(new(bytes.Buffer))
	cmd.SetArgs([]string{"--cache-dir", t.TempDir(), "list", "-o", "yaml"})
	if err := cmd.ExecuteContext(t.Context()); err == nil || !strings.Contains(err.Error(), "yaml") {
		t.Errorf("err = %v, want one naming the bad format", err)
	}
}
