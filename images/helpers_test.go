package images

import (
	"archive/tar"
	"bytes"
	"io"
	"log"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gofrs/flock"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/openshell/openshell/internal/testenv"
)

var testTime = time.Date(2021, 3, 4, 5, 6, 7, 0, time.UTC)

// ent is one tar entry for test layers.
type ent struct {
	name     string
	typ      byte
	mode     int64
	uid, gid int
	body     string
	link     string
	xattrs   map[string]string
	major    int64
	minor    int64
}

func tarBytes(t testing.TB, ents ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid,
			Linkname: e.link, ModTime: testTime, Devmajor: e.major, Devminor: e.minor, Format: tar.FormatPAX}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if len(e.xattrs) > 0 {
			h.PAXRecords = map[string]string{}
			for k, v := range e.xattrs {
				h.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func layerOf(t testing.TB, ents ...ent) v1.Layer {
	t.Helper()
	b := tarBytes(t, ents...)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func imageOf(t testing.TB, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Entrypoint = []string{"/bin/tool"}
	cf.Config.Cmd = []string{"--serve"}
	cf.Config.Env = []string{"PATH=/usr/bin:/bin", "GREETING=hi"}
	cf.Config.User = "1000:1000"
	cf.Config.WorkingDir = "/work"
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// richImage has three layers exercising every unpacking rule the ext4 tests check.
func richImage(t testing.TB) v1.Image {
	base, upper, hostile := richLayers(t)
	return imageOf(t, base, upper, hostile)
}

// benignImage is richImage without the hostile layer (which a Docker daemon
// would refuse to load).
func benignImage(t testing.TB) v1.Image {
	base, upper, _ := richLayers(t)
	return imageOf(t, base, upper)
}

func richLayers(t testing.TB) (base, upper, hostile v1.Layer) {
	base = layerOf(t,
		ent{name: "etc/", typ: tar.TypeDir},
		ent{name: "etc/passwd", body: "root:x:0:0:root:/root:/bin/sh\n"},
		ent{name: "bin/", typ: tar.TypeDir},
		ent{name: "bin/su", mode: 0o4755, body: "#!/bin/true\n"},
		ent{name: "bin/tool", mode: 0o750, uid: 1000, gid: 1001, body: "tool-v1"},
		ent{name: "bin/tool-hard", typ: tar.TypeLink, link: "bin/tool"},
		ent{name: "usr/lib/liba.so", body: "aaa"},
		ent{name: "usr/lib/libb.so", body: "bbb"},
		ent{name: "usr/lib/libfoo.so", typ: tar.TypeSymlink, link: "libb.so"},
		ent{name: "opq/", typ: tar.TypeDir, mode: 0o1777},
		ent{name: "opq/old", body: "old"},
		ent{name: "opq/sub/old2", body: "old2"},
		ent{name: "data/x", body: "with xattr", xattrs: map[string]string{"user.openshell": "yes"}},
		ent{name: "dev/", typ: tar.TypeDir},
		ent{name: "dev/null", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
		ent{name: "run/fifo", typ: tar.TypeFifo, mode: 0o600},
		ent{name: "gone/deep/file", body: "removed later"},
	)
	upper = layerOf(t,
		ent{name: "usr/lib/.wh.liba.so", body: ""},
		ent{name: ".wh.gone", body: ""},
		ent{name: "opq/", typ: tar.TypeDir, mode: 0o1777},
		ent{name: "opq/new", body: "new"},
		ent{name: "opq/.wh..wh..opq", body: ""},
		ent{name: "bin/tool", mode: 0o750, uid: 1000, gid: 1001, body: "tool-v2"},
		ent{name: "bin/tool-hard2", typ: tar.TypeLink, link: "/bin/tool"},
		ent{name: "work/", typ: tar.TypeDir, uid: 1000, gid: 1000},
	)
	// A hostile top layer: everything it tries stays inside the rootfs.
	hostile = layerOf(t,
		ent{name: "../../escape-dotdot", body: "contained"},
		ent{name: "/abs-file", body: "contained"},
		ent{name: "evil", typ: tar.TypeSymlink, link: "/etc"},
		ent{name: "evil/hosts", body: "written through an in-image symlink"},
		ent{name: "up", typ: tar.TypeSymlink, link: "../../../../../../etc"},
		ent{name: "up/openshell-escape-test", body: "must land in rootfs/etc"},
		ent{name: "hl-passwd", typ: tar.TypeLink, link: "../../../../etc/passwd"},
	)
	return base, upper, hostile
}

func writeLayout(t testing.TB, dir string, img v1.Image, tag string) {
	t.Helper()
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	var opts []layout.Option
	if tag != "" {
		opts = append(opts, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag}))
	}
	if err := lp.AppendImage(img, opts...); err != nil {
		t.Fatal(err)
	}
}

// tarDir writes the tree at dir as a tar file (for OCI archives).
func tarDir(t testing.TB, dir, out string) {
	t.Helper()
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	err = filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		h, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(rel)
		if info.IsDir() {
			h.Name += "/"
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			_, err = tw.Write(b)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}

// ---- reading ext4 images back with debugfs (no mount needed) ----

type ext4Stat struct {
	Inode    int
	Type     string
	Mode     int64
	UID, GID int
	Links    int
	Size     int64
}

var (
	reInode = regexp.MustCompile(`Inode:\s+(\d+)\s+Type:\s+(.+?)\s+Mode:\s+(\d+)`)
	reUser  = regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+)`)
	reLinks = regexp.MustCompile(`Links:\s+(\d+)`)
	reSize  = regexp.MustCompile(`Size:\s+(\d+)`)
)

func debugfs(t testing.TB, img, req string) string {
	t.Helper()
	bin := testenv.RequireCommand(t, "debugfs", "apt-get install e2fsprogs")
	out, err := exec.Command(bin, "-R", req, img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs -R %q %s: %v\n%s", req, img, err, out)
	}
	// debugfs prints its version banner on stderr first.
	s := string(out)
	if i := strings.Index(s, "\n"); strings.HasPrefix(s, "debugfs ") && i >= 0 {
		s = s[i+1:]
	}
	return s
}

// statExt4 returns nil when p does not exist in the image.
func statExt4(t testing.TB, img, p string) *ext4Stat {
	t.Helper()
	out := debugfs(t, img, "stat "+p)
	if strings.Contains(out, "File not found") {
		return nil
	}
	m := reInode.FindStringSubmatch(out)
	u := reUser.FindStringSubmatch(out)
	l := reLinks.FindStringSubmatch(out)
	sz := reSize.FindStringSubmatch(out)
	if m == nil || u == nil || l == nil || sz == nil {
		t.Fatalf("cannot parse debugfs stat %s:\n%s", p, out)
	}
	st := &ext4Stat{Type: m[2]}
	st.Inode, _ = strconv.Atoi(m[1])
	st.Mode, _ = strconv.ParseInt(m[3], 8, 64)
	st.UID, _ = strconv.Atoi(u[1])
	st.GID, _ = strconv.Atoi(u[2])
	st.Links, _ = strconv.Atoi(l[1])
	st.Size, _ = strconv.ParseInt(sz[1], 10, 64)
	return st
}

func catExt4(t testing.TB, img, p string) string {
	t.Helper()
	return debugfs(t, img, "cat "+p)
}

func nilLogger() *log.Logger { return log.New(io.Discard, "", 0) }

func execCommand(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

// lockForTest takes the exclusive lock a running build holds.
func lockForTest(c *Cache, key string) (func(), error) {
	lk := flock.New(c.lockPath(key))
	if err := lk.Lock(); err != nil {
		return nil, err
	}
	return func() { _ = lk.Unlock() }, nil
}

func randomBytes(n int, seed uint64) string {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return string(b)
}
