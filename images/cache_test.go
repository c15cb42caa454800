package images

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/openshell/openshell/internal/testenv"
)

func requireTools(t testing.TB) {
	t.Helper()
	testenv.RequireCommand(t, "mkfs.ext4", "apt-get install e2fsprogs")
	testenv.RequireCommand(t, "debugfs", "apt-get install e2fsprogs")
}

func newTestCache(t testing.TB) *Cache {
	t.Helper()
	c, err := NewCache(filepath.Join(t.TempDir(), "cache"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// phases records the progress phases seen, safe for concurrent callers.
type phases struct {
	mu   sync.Mutex
	seen []string
}

func (p *phases) fn(pr Progress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.seen); n == 0 || p.seen[n-1] != pr.Phase {
		p.seen = append(p.seen, pr.Phase)
	}
}

func (p *phases) has(ph string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.seen {
		if s == ph {
			return true
		}
	}
	return false
}

// checkRichDisk asserts the ext4 image holds exactly what richImage's layers
// leave after whiteouts, with owners, modes, links and xattrs intact.
func checkRichDisk(t *testing.T, disk string) {
	t.Helper()
	checkBenignDisk(t, disk)
	// Hostile entries stayed inside the image.
	for _, p := range []string{"/escape-dotdot", "/abs-file", "/etc/hosts", "/etc/openshell-escape-test"} {
		if statExt4(t, disk, p) == nil {
			t.Errorf("%s missing: hostile entries must be contained in the rootfs, not dropped silently", p)
		}
	}
	if pw, hl := statExt4(t, disk, "/etc/passwd"), statExt4(t, disk, "/hl-passwd"); pw == nil || hl == nil || pw.Inode != hl.Inode {
		t.Errorf("hardlink ../../etc/passwd should link the image's own /etc/passwd: %+v vs %+v", hl, pw)
	}
	if _, err := os.Stat("/etc/openshell-escape-test"); err == nil {
		t.Error("a layer wrote /etc/openshell-escape-test on the host")
	}
}

// checkBenignDisk checks what benignImage's two layers leave.
func checkBenignDisk(t *testing.T, disk string) {
	t.Helper()
	if st := statExt4(t, disk, "/bin/su"); st == nil || st.Mode != 0o4755 || st.UID != 0 || st.Type != "regular" {
		t.Errorf("/bin/su = %+v, want regular 04755 owned by 0", st)
	}
	tool := statExt4(t, disk, "/bin/tool")
	if tool == nil || tool.UID != 1000 || tool.GID != 1001 || tool.Mode != 0o750 {
		t.Fatalf("/bin/tool = %+v, want 1000:1001 0750", tool)
	}
	if got := catExt4(t, disk, "/bin/tool"); got != "tool-v2" {
		t.Errorf("/bin/tool content %q, want the upper layer's tool-v2", got)
	}
	// The lower layer's hardlink points at the replaced inode of the lower
	// layer's tool; the upper layer's hardlink shares the new one.
	hard2 := statExt4(t, disk, "/bin/tool-hard2")
	if hard2 == nil || hard2.Inode != tool.Inode || tool.Links != 2 {
		t.Errorf("/bin/tool-hard2 = %+v, /bin/tool = %+v: want the same inode with 2 links", hard2, tool)
	}
	if got := catExt4(t, disk, "/bin/tool-hard"); got != "tool-v1" {
		t.Errorf("/bin/tool-hard content %q, want tool-v1 (hardlink to the lower file)", got)
	}
	if st := statExt4(t, disk, "/usr/lib/liba.so"); st != nil {
		t.Errorf("/usr/lib/liba.so survived its whiteout: %+v", st)
	}
	if st := statExt4(t, disk, "/gone"); st != nil {
		t.Errorf("/gone survived its whiteout: %+v", st)
	}
	if st := statExt4(t, disk, "/usr/lib/libb.so"); st == nil {
		t.Error("/usr/lib/libb.so missing: the whiteout removed too much")
	}
	if st := statExt4(t, disk, "/usr/lib/libfoo.so"); st == nil || st.Type != "symlink" {
		t.Errorf("/usr/lib/libfoo.so = %+v, want a symlink", st)
	}
	if out := debugfs(t, disk, "ls -p /opq"); strings.Contains(out, "/old/") || strings.Contains(out, "/sub/") || !strings.Contains(out, "/new/") {
		t.Errorf("opaque /opq lists:\n%s\nwant only new", out)
	}
	if st := statExt4(t, disk, "/opq"); st == nil || st.Mode != 0o1777 {
		t.Errorf("/opq = %+v, want sticky 01777", st)
	}
	if st := statExt4(t, disk, "/dev/null"); st == nil || st.Type != "character special" {
		t.Errorf("/dev/null = %+v, want a character device", st)
	}
	if st := statExt4(t, disk, "/run/fifo"); st == nil || st.Type != "FIFO" {
		t.Errorf("/run/fifo = %+v, want a FIFO", st)
	}
	if out := debugfs(t, disk, "ea_list /data/x"); !strings.Contains(out, "user.openshell") || !strings.Contains(out, "yes") {
		t.Errorf("xattrs of /data/x:\n%s\nwant user.openshell = yes", out)
	}
	if st := statExt4(t, disk, "/"); st == nil || st.UID != 0 || st.GID != 0 {
		t.Errorf("root dir = %+v, want owned by 0:0", st)
	}
	if st := statExt4(t, disk, "/work"); st == nil || st.UID != 1000 {
		t.Errorf("/work = %+v, want owned by 1000", st)
	}
}

func TestEnsureOCILayout(t *testing.T) {
	requireTools(t)
	ctx := t.Context()
	dir := filepath.Join(t.TempDir(), "layout")
	img := richImage(t)
	writeLayout(t, dir, img, "v1")
	c := newTestCache(t)

	var ph phases
	e, err := c.Ensure(ctx, "oci-layout:"+dir+":v1", ph.fn)
	if err != nil {
		t.Fatal(err)
	}
	wantDigest, _ := img.Digest()
	if e.Digest != wantDigest.String() {
		t.Errorf("Digest = %s, want manifest digest %s", e.Digest, wantDigest)
	}
	for _, p := range []string{"resolve", "pull", "convert", "done"} {
		if !ph.has(p) {
			t.Errorf("progress phases %v lack %q", ph.seen, p)
		}
	}
	want := ImageConfig{User: "1000:1000", WorkingDir: "/work", Env: []string{"PATH=/usr/bin:/bin", "GREETING=hi"},
		Entrypoint: []string{"/bin/tool"}, Cmd: []string{"--serve"}}
	if !reflect.DeepEqual(e.Config, want) {
		t.Errorf("Config = %+v, want %+v", e.Config, want)
	}
	if e.DiskPath != filepath.Join(c.Dir(), e.Key, "rootfs.ext4") {
		t.Errorf("DiskPath = %s", e.DiskPath)
	}
	st, err := os.Stat(e.DiskPath)
	if err != nil || st.Size() != e.SizeBytes || st.Mode().Perm() != 0o444 {
		t.Errorf("disk %s: %v, %v; want size %d, mode 0444", e.DiskPath, err, st, e.SizeBytes)
	}
	checkRichDisk(t, e.DiskPath)
	if out, err := runFsck(e.DiskPath); err != nil {
		t.Errorf("e2fsck -fn %s: %v\n%s", e.DiskPath, err, out)
	}

	// Cached: fast, no conversion, the same entry. Also by digest and by bare path.
	for _, ref := range []string{"oci-layout:" + dir + ":v1", "oci-layout:" + dir + "@" + wantDigest.String(), dir} {
		var ph2 phases
		start := time.Now()
		e2, err := c.Ensure(ctx, ref, ph2.fn)
		took := time.Since(start)
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		if e2.Key != e.Key || ph2.has("convert") || !ph2.has("cached") {
			t.Errorf("%s: second Ensure key %s phases %v, want cached %s", ref, e2.Key, ph2.seen, e.Key)
		}
		if took > 100*time.Millisecond {
			t.Errorf("%s: cached Ensure took %v, want < 100ms", ref, took)
		}
	}
	if _, err := c.Ensure(ctx, "oci-layout:"+dir+":nope", nil); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("unknown tag: %v, want ErrNotFound naming the tag", err)
	}
	entries, err := c.List()
	if err != nil || len(entries) != 1 || entries[0].Key != e.Key || entries[0].Ref != "oci-layout:"+dir+":v1" {
		t.Errorf("List = %+v, %v", entries, err)
	}
}

func runFsck(disk string) (string, error) {
	out, err := execCommand("e2fsck", "-fn", disk)
	return out, err
}

func TestEnsureRegistry(t *testing.T) {
	requireTools(t)
	ctx := t.Context()
	srv := httptest.NewServer(registry.New(registry.Logger(nilLogger())))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	img := richImage(t)
	tag, err := name.NewTag(host + "/openshell/rich:1.0")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img, remote.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	c := newTestCache(t)
	var mu sync.Mutex
	var last Progress
	e, err := c.Ensure(ctx, tag.String(), func(p Progress) {
		mu.Lock()
		defer mu.Unlock()
		if p.Phase == "pull" {
			last = p
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	var want int64
	ls, _ := img.Layers()
	for _, l := range ls {
		n, _ := l.Size()
		want += n
	}
	if last.Total != want || last.Done != want {
		t.Errorf("last pull progress %+v, want Done=Total=%d (compressed layer bytes)", last, want)
	}
	d, _ := img.Digest()
	if e.Digest != d.String() || e.Ref != tag.String() {
		t.Errorf("entry digest %s ref %s, want %s %s", e.Digest, e.Ref, d, tag)
	}
	checkRichDisk(t, e.DiskPath)

	// By digest: no registry round trip is needed at all.
	byDigest := host + "/openshell/rich@" + d.String()
	start := time.Now()
	e2, err := c.Ensure(ctx, byDigest, nil)
	if err != nil || e2.Key != e.Key {
		t.Fatalf("by digest: %v %v", e2, err)
	}
	if took := time.Since(start); took > 100*time.Millisecond {
		t.Errorf("cached Ensure by digest took %v", took)
	}
	// Tag, registry gone: the cached entry for that tag is used.
	srv.Close()
	e3, err := c.Ensure(ctx, tag.String(), nil)
	if err != nil || e3.Key != e.Key {
		t.Errorf("offline tag: %v %v, want cached entry %s", e3, err, e.Key)
	}
	if _, err := c.Ensure(ctx, host+"/openshell/other:1", nil); err == nil {
		t.Error("unknown image with the registry down: no error")
	}
}

func TestEnsureArchives(t *testing.T) {
	requireTools(t)
	ctx := t.Context()
	tmp := t.TempDir()
	img := richImage(t)
	d, _ := img.Digest()

	// docker-archive: what `docker save` writes.
	dockerTar := filepath.Join(tmp, "image.tar")
	tag, _ := name.NewTag("openshell/rich:1")
	if err := tarball.WriteToFile(dockerTar, tag, img); err != nil {
		t.Fatal(err)
	}
	// oci-archive: a tarred OCI layout.
	lay := filepath.Join(tmp, "layout")
	writeLayout(t, lay, img, "")
	ociTar := filepath.Join(tmp, "image.oci.tar")
	tarDir(t, lay, ociTar)

	c := newTestCache(t)
	cfgDigest, _ := img.ConfigName()
	for _, tc := range []struct {
		ref, digest string
	}{
		{"docker-archive:" + dockerTar, cfgDigest.String()},
		{"oci-archive:" + ociTar, d.String()},
	} {
		t.Run(strings.SplitN(tc.ref, ":", 2)[0], func(t *testing.T) {
			var ph0 phases
			e, err := c.Ensure(ctx, tc.ref, ph0.fn)
			if err != nil {
				t.Fatal(err)
			}
			if strings.HasPrefix(tc.ref, "oci-archive:") && !ph0.has("fetch") {
				t.Errorf("phases %v: an OCI archive is extracted first and should report fetch", ph0.seen)
			}
			if e.Digest != tc.digest {
				t.Errorf("Digest %s, want %s", e.Digest, tc.digest)
			}
			checkRichDisk(t, e.DiskPath)
			var ph phases
			start := time.Now()
			if _, err := c.Ensure(ctx, tc.ref, ph.fn); err != nil || ph.has("convert") {
				t.Errorf("second Ensure: %v, phases %v", err, ph.seen)
			}
			if took := time.Since(start); took > 100*time.Millisecond {
				t.Errorf("cached Ensure took %v", took)
			}
		})
	}
}

func TestEnsureConcurrentOneConversion(t *testing.T) {
	requireTools(t)
	dir := filepath.Join(t.TempDir(), "layout")
	writeLayout(t, dir, richImage(t), "")
	c := newTestCache(t)
	// A second Cache on the same directory behaves like another process.
	c2, err := NewCache(c.Dir())
	if err != nil {
		t.Fatal(err)
	}
	var conversions atomic.Int32
	var wg sync.WaitGroup
	results := make([]*Entry, 4)
	errs := make([]error, 4)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cc := c
			if i%2 == 1 {
				cc = c2
			}
			results[i], errs[i] = cc.Ensure(t.Context(), "oci-layout:"+dir, func(p Progress) {
				if p.Phase == "convert" {
					conversions.Add(1)
				}
			})
		}()
	}
	wg.Wait()
	for i := range 4 {
		if errs[i] != nil {
			t.Fatalf("goroutine %d: %v", i, errs[i])
		}
		if results[i].Key != results[0].Key || results[i].DiskPath != results[0].DiskPath {
			t.Errorf("goroutine %d got %s, goroutine 0 %s", i, results[i].Key, results[0].Key)
		}
	}
	if n := conversions.Load(); n != 1 {
		t.Errorf("%d conversions, want 1", n)
	}
	checkRichDisk(t, results[0].DiskPath)
	assertNoDebris(t, c)
}

func assertNoDebris(t *testing.T, c *Cache) {
	t.Helper()
	des, err := os.ReadDir(filepath.Join(c.Dir(), ".tmp"))
	if err != nil {
		t.Fatal(err)
	}
	if len(des) != 0 {
		t.Errorf("work directories left behind: %v", des)
	}
}

func TestEnsureCorruptLayer(t *testing.T) {
	requireTools(t)
	for _, mode := range []string{"flipped-bytes", "not-gzip", "truncated"} {
		t.Run(mode, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "layout")
			l1 := layerOf(t, ent{name: "a", body: strings.Repeat("payload ", 4096)})
			l2 := layerOf(t, ent{name: "b", body: "second"})
			writeLayout(t, dir, imageOf(t, l1, l2), "")
			bad, _ := l2.Digest()
			blob := filepath.Join(dir, "blobs", "sha256", bad.Hex)
			raw, err := os.ReadFile(blob)
			if err != nil {
				t.Fatal(err)
			}
			switch mode {
			case "flipped-bytes":
				raw[len(raw)/2] ^= 0xff
			case "not-gzip":
				raw = []byte(strings.Repeat("garbage!", len(raw)/8+1))[:len(raw)]
				raw[0], raw[1] = 0x1f, 0x8b
			case "truncated":
				raw = raw[:len(raw)/2]
			}
			if err := os.WriteFile(blob, raw, 0o644); err != nil {
				t.Fatal(err)
			}
			c := newTestCache(t)
			_, err = c.Ensure(t.Context(), "oci-layout:"+dir, nil)
			if !errors.Is(err, ErrCorruptLayer) || !strings.Contains(err.Error(), bad.String()) {
				t.Fatalf("err = %v, want ErrCorruptLayer naming %s", err, bad)
			}
			if es, _ := c.List(); len(es) != 0 {
				t.Errorf("entries after a failed conversion: %+v", es)
			}
			assertNoDebris(t, c)
		})
	}
}

func TestPruneSkipsInUse(t *testing.T) {
	requireTools(t)
	ctx := t.Context()
	c := newTestCache(t)
	tmp := t.TempDir()
	var keys []string
	for i := range 2 {
		dir := filepath.Join(tmp, fmt.Sprint(i))
		writeLayout(t, dir, imageOf(t, layerOf(t, ent{name: "f", body: fmt.Sprint(i)})), "")
		e, err := c.Ensure(ctx, "oci-layout:"+dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, e.Key)
	}
	release, err := c.Acquire(keys[0])
	if err != nil {
		t.Fatal(err)
	}
	if inUse, err := c.InUse(keys[0]); err != nil || !inUse {
		t.Errorf("InUse(acquired) = %v, %v", inUse, err)
	}
	// A second shared holder is fine (two VMs on one image).
	release2, err := c.Acquire(keys[0])
	if err != nil {
		t.Fatal(err)
	}
	removed, err := c.Prune(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0].Key != keys[1] {
		t.Errorf("removed %+v, want only %s", removed, keys[1])
	}
	if _, err := os.Stat(filepath.Join(c.Dir(), keys[1])); !os.IsNotExist(err) {
		t.Errorf("pruned entry dir still there: %v", err)
	}
	if _, err := c.Acquire(keys[1]); !errors.Is(err, ErrNotFound) {
		t.Errorf("Acquire(pruned) = %v, want ErrNotFound", err)
	}
	release()
	if removed, _ := c.Prune(ctx, nil); len(removed) != 0 {
		t.Errorf("pruned %+v while a second holder still uses it", removed)
	}
	release2()
	removed, err = c.Prune(ctx, func(e *Entry) bool { return false })
	if err != nil || len(removed) != 1 || removed[0].Key != keys[0] {
		t.Errorf("after release: removed %+v, %v", removed, err)
	}
	if es, _ := c.List(); len(es) != 0 {
		t.Errorf("List after prune = %+v", es)
	}
	if _, err := c.Acquire("../../etc"); err == nil {
		t.Error("Acquire accepted a malformed key")
	}
}

func TestPruneRemovesDebris(t *testing.T) {
	c := newTestCache(t)
	key, _ := KeyFor("sha256:" + strings.Repeat("a", 64))
	stale := filepath.Join(c.Dir(), ".tmp", key+"-123")
	if err := os.MkdirAll(filepath.Join(stale, "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	busyKey, _ := KeyFor("sha256:" + strings.Repeat("b", 64))
	busy := filepath.Join(c.Dir(), ".tmp", busyKey+"-456")
	if err := os.MkdirAll(busy, 0o755); err != nil {
		t.Fatal(err)
	}
	release, err := lockForTest(c, busyKey)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if _, err := c.Prune(t.Context(), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale work dir kept: %v", err)
	}
	if _, err := os.Stat(busy); err != nil {
		t.Errorf("work dir of a running build removed: %v", err)
	}
}

func TestDefaultCacheDir(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", "/x/cache")
	if d, _ := DefaultCacheDir(); d != "/x/cache/openshell/images" {
		t.Errorf("with XDG_CACHE_HOME: %s", d)
	}
	t.Setenv("XDG_CACHE_HOME", "")
	t.Setenv("HOME", "/home/u")
	if d, _ := DefaultCacheDir(); d != "/home/u/.cache/openshell/images" {
		t.Errorf("without XDG_CACHE_HOME: %s", d)
	}
}

func TestEnsureReplacesDamagedEntry(t *testing.T) {
	requireTools(t)
	dir := filepath.Join(t.TempDir(), "layout")
	writeLayout(t, dir, benignImage(t), "")
	c := newTestCache(t)
	e, err := c.Ensure(t.Context(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A half-deleted entry (config.json gone) must not be served, nor block a rebuild.
	if err := os.Remove(filepath.Join(c.Dir(), e.Key, "config.json")); err != nil {
		t.Fatal(err)
	}
	if es, _ := c.List(); len(es) != 0 {
		t.Errorf("List shows a damaged entry: %+v", es)
	}
	var ph phases
	e2, err := c.Ensure(t.Context(), dir, ph.fn)
	if err != nil {
		t.Fatal(err)
	}
	if e2.Key != e.Key || !ph.has("convert") {
		t.Errorf("rebuild: key %s phases %v", e2.Key, ph.seen)
	}
	checkBenignDisk(t, e2.DiskPath)
	assertNoDebris(t, c)
}

// corruptingWriter flips one byte of what passes through it.
type corruptingWriter struct {
	http.ResponseWriter
	n int
}

func (w *corruptingWriter) Write(p []byte) (int, error) {
	if w.n >= 0 && w.n < len(p) {
		q := append([]byte(nil), p...)
		q[w.n] ^= 0xff
		w.n = -1
		return w.ResponseWriter.Write(q)
	}
	if w.n >= 0 {
		w.n -= len(p)
	}
	return w.ResponseWriter.Write(p)
}

// TestEnsureRegistryCorruptBlob serves a layer whose bytes were damaged in
// transit: the pull fails naming the layer and leaves nothing behind.
func TestEnsureRegistryCorruptBlob(t *testing.T) {
	requireTools(t)
	l1 := layerOf(t, ent{name: "a", body: strings.Repeat("payload ", 8192)})
	l2 := layerOf(t, ent{name: "b", body: strings.Repeat("second ", 8192)})
	bad, _ := l2.Digest()
	reg := registry.New(registry.Logger(nilLogger()))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+bad.String()) {
			w = &corruptingWriter{ResponseWriter: w, n: 100}
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	tag, err := name.NewTag(strings.TrimPrefix(srv.URL, "http://") + "/openshell/corrupt:1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, imageOf(t, l1, l2), remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	c := newTestCache(t)
	_, err = c.Ensure(t.Context(), tag.String(), nil)
	if !errors.Is(err, ErrCorruptLayer) || !strings.Contains(err.Error(), bad.String()) {
		t.Fatalf("err = %v, want ErrCorruptLayer naming %s", err, bad)
	}
	t.Logf("error: %v", err)
	if es, _ := c.List(); len(es) != 0 {
		t.Errorf("entries after a failed pull: %+v", es)
	}
	assertNoDebris(t, c)
}

func TestEnsureAcquired(t *testing.T) {
	requireTools(t)
	dir := filepath.Join(t.TempDir(), "layout")
	writeLayout(t, dir, benignImage(t), "")
	c := newTestCache(t)
	e, release, err := c.EnsureAcquired(t.Context(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if inUse, _ := c.InUse(e.Key); !inUse {
		t.Error("entry not in use after EnsureAcquired")
	}
	if removed, _ := c.Prune(t.Context(), nil); len(removed) != 0 {
		t.Errorf("pruned an acquired entry: %+v", removed)
	}
	release()
	if inUse, _ := c.InUse(e.Key); inUse {
		t.Error("entry still in use after release")
	}
}
