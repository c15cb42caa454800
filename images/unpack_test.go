//go:build linux

package images

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// sandboxDirs lays out tmp/{root,sentinel,outside}: the unpack target, a
// directory that must stay empty, and one holding a file that must stay as is.
func sandboxDirs(t testing.TB) (tmp, root string) {
	t.Helper()
	// tmpfs when there is one: fuzzing creates and removes these trees for
	// every input, and a disk-backed filesystem makes that the bottleneck.
	var err error
	tmp, err = os.MkdirTemp("/dev/shm", "openshell-unpack-")
	if err != nil {
		tmp, err = os.MkdirTemp("", "openshell-unpack-")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(tmp) })
	root = filepath.Join(tmp, "root")
	for _, d := range []string{root, filepath.Join(tmp, "sentinel"), filepath.Join(tmp, "outside")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(tmp, "outside", "secret"), []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	return tmp, root
}

// assertContained fails when anything outside root changed.
func assertContained(t testing.TB, tmp string) {
	t.Helper()
	des, err := os.ReadDir(tmp)
	if err != nil {
		t.Fatal(err)
	}
	if len(des) != 3 {
		var names []string
		for _, d := range des {
			names = append(names, d.Name())
		}
		t.Fatalf("unpack created entries beside the rootfs: %v", names)
	}
	if des, _ := os.ReadDir(filepath.Join(tmp, "sentinel")); len(des) != 0 {
		t.Fatalf("sentinel dir got %d entries, e.g. %s", len(des), des[0].Name())
	}
	if des, _ := os.ReadDir(filepath.Join(tmp, "outside")); len(des) != 1 {
		t.Fatalf("outside dir has %d entries, want only secret", len(des))
	}
	secret := filepath.Join(tmp, "outside", "secret")
	st, err := os.Lstat(secret)
	if err != nil {
		t.Fatalf("outside/secret: %v", err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	if b, _ := os.ReadFile(secret); string(b) != "secret" || st.Mode() != 0o600 || sys.Nlink != 1 || int(sys.Uid) != os.Geteuid() {
		t.Fatalf("outside/secret changed: %q mode %v nlink %d uid %d", b, st.Mode(), sys.Nlink, sys.Uid)
	}
	for _, d := range []string{"sentinel", "outside"} {
		if st, err := os.Lstat(filepath.Join(tmp, d)); err != nil || !st.IsDir() || st.Mode().Perm() != 0o755 {
			t.Fatalf("%s: %v %v", d, st, err)
		}
	}
}

func hostileCases(t testing.TB, tmp string) map[string][]byte {
	abs := filepath.Join(tmp, "sentinel")
	return map[string][]byte{
		"dotdot":   tarBytes(t, ent{name: "../sentinel/x", body: "x"}, ent{name: "../../../../sentinel/y", body: "y"}),
		"absolute": tarBytes(t, ent{name: abs + "/x", body: "x"}, ent{name: "/../sentinel/y", body: "y"}),
		"rel-symlink-dir": tarBytes(t,
			ent{name: "a", typ: tar.TypeSymlink, link: "../sentinel"},
			ent{name: "a/x", body: "x"}),
		"abs-symlink-dir": tarBytes(t,
			ent{name: "a", typ: tar.TypeSymlink, link: abs},
			ent{name: "a/x", body: "x"}),
		"symlink-root-then-dotdot": tarBytes(t,
			ent{name: "a", typ: tar.TypeSymlink, link: "/"},
			ent{name: "a/../../sentinel/x", body: "x"}),
		"symlink-chain": tarBytes(t,
			ent{name: "b", typ: tar.TypeSymlink, link: "../.."},
			ent{name: "a", typ: tar.TypeSymlink, link: "b/sentinel"},
			ent{name: "a/x", body: "x"},
			ent{name: "a/d/", typ: tar.TypeDir}),
		"hardlink-outside": tarBytes(t,
			ent{name: "h", typ: tar.TypeLink, link: "../outside/secret"},
			ent{name: "h2", typ: tar.TypeLink, link: filepath.Join(tmp, "outside", "secret")}),
		"hardlink-via-symlink": tarBytes(t,
			ent{name: "o", typ: tar.TypeSymlink, link: "../outside"},
			ent{name: "h", typ: tar.TypeLink, link: "o/secret"}),
		"write-over-symlink": tarBytes(t,
			ent{name: "s", typ: tar.TypeSymlink, link: "../outside/secret"},
			ent{name: "s", body: "overwrite", mode: 0o777}),
		"whiteout-through-symlink": tarBytes(t,
			ent{name: "o", typ: tar.TypeSymlink, link: "../outside"},
			ent{name: "o/.wh.secret"},
			ent{name: ".wh..", body: ""},
			ent{name: "../outside/.wh.secret"}),
		"opaque-through-symlink": tarBytes(t,
			ent{name: "o", typ: tar.TypeSymlink, link: "../outside"},
			ent{name: "o/.wh..wh..opq"}),
		"dir-over-symlink": tarBytes(t,
			ent{name: "o", typ: tar.TypeSymlink, link: "../outside"},
			ent{name: "o/", typ: tar.TypeDir, mode: 0o777}),
		"chown-symlink": tarBytes(t,
			ent{name: "l", typ: tar.TypeSymlink, link: "../outside/secret", uid: 4242, gid: 4242,
				xattrs: map[string]string{"user.x": "y"}}),
		"root-entry": tarBytes(t, ent{name: "./", typ: tar.TypeDir, mode: 0o700}, ent{name: "..", typ: tar.TypeDir, mode: 0o700}),
		"device-through-symlink": tarBytes(t,
			ent{name: "o", typ: tar.TypeSymlink, link: "../sentinel"},
			ent{name: "o/null", typ: tar.TypeChar, major: 1, minor: 3},
			ent{name: "o/fifo", typ: tar.TypeFifo}),
	}
}

func TestUnpackContainment(t *testing.T) {
	probe, _ := sandboxDirs(t)
	for name, stream := range hostileCases(t, probe) {
		t.Run(name, func(t *testing.T) {
			tmp, root := sandboxDirs(t)
			// Rebuild the stream for this tmp so absolute paths point at its sentinel.
			stream = hostileCases(t, tmp)[name]
			err := UnpackLayer(t.Context(), root, bytes.NewReader(stream))
			t.Logf("UnpackLayer: %v", err)
			assertContained(t, tmp)
		})
	}
}

func TestUnpackContainedResults(t *testing.T) {
	tmp, root := sandboxDirs(t)
	stream := hostileCases(t, tmp)["rel-symlink-dir"]
	if err := UnpackLayer(t.Context(), root, bytes.NewReader(stream)); err != nil {
		t.Fatal(err)
	}
	// "a -> ../sentinel" resolves like in a chroot: to /sentinel inside the rootfs.
	if b, err := os.ReadFile(filepath.Join(root, "sentinel", "x")); err != nil || string(b) != "x" {
		t.Errorf("a/x should land in rootfs/sentinel/x: %q %v", b, err)
	}
	assertContained(t, tmp)

	tmp, root = sandboxDirs(t)
	if err := UnpackLayer(t.Context(), root, bytes.NewReader(hostileCases(t, tmp)["write-over-symlink"])); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Lstat(filepath.Join(root, "s")); err != nil || !st.Mode().IsRegular() {
		t.Errorf("s should be a regular file replacing the symlink: %v %v", st, err)
	}
	assertContained(t, tmp)
}

func TestUnpackOwnershipAndModes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to set ownership")
	}
	_, root := sandboxDirs(t)
	stream := tarBytes(t,
		ent{name: "bin/su", mode: 0o4755, uid: 0, gid: 0, body: "su"},
		ent{name: "bin/sg", mode: 0o2755, uid: 5, gid: 6, body: "sg"},
		ent{name: "home/u/", typ: tar.TypeDir, mode: 0o700, uid: 1000, gid: 1000},
		ent{name: "l", typ: tar.TypeSymlink, link: "bin/su", uid: 7, gid: 8},
	)
	if err := UnpackLayer(t.Context(), root, bytes.NewReader(stream)); err != nil {
		t.Fatal(err)
	}
	check := func(p string, mode os.FileMode, uid, gid uint32) {
		t.Helper()
		st, err := os.Lstat(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		sys := st.Sys().(*syscall.Stat_t)
		if mode != 0 && st.Mode() != mode || sys.Uid != uid || sys.Gid != gid {
			t.Errorf("%s: mode %v uid %d gid %d, want %v %d %d", p, st.Mode(), sys.Uid, sys.Gid, mode, uid, gid)
		}
		if !st.ModTime().Equal(testTime) {
			t.Errorf("%s: mtime %v, want %v", p, st.ModTime(), testTime)
		}
	}
	check("bin/su", 0o755|os.ModeSetuid, 0, 0)
	check("bin/sg", 0o755|os.ModeSetgid, 5, 6)
	check("home/u", 0o700|os.ModeDir, 1000, 1000)
	check("l", 0, 7, 8)
	// The symlink's owner changed, not its target's.
	check("bin/su", 0o755|os.ModeSetuid, 0, 0)
}

// FuzzUnpack feeds arbitrary tar streams to the unpacker: it must never panic
// and never create, change or remove anything outside the rootfs.
func FuzzUnpack(f *testing.F) {
	tmp := f.TempDir()
	for _, stream := range hostileCases(f, tmp) {
		f.Add(stream)
	}
	f.Add(tarBytes(f,
		ent{name: "d/", typ: tar.TypeDir},
		ent{name: "d/f", body: "f"},
		ent{name: "d/.wh..wh..opq"},
		ent{name: "d/h", typ: tar.TypeLink, link: "d/f"},
		ent{name: "e", typ: tar.TypeSymlink, link: "d"},
		ent{name: "e/.wh.f"}))
	f.Fuzz(func(t *testing.T, stream []byte) {
		tmp, root := sandboxDirs(t)
		_ = unpackLayer(t.Context(), root, bytes.NewReader(stream), 1<<20)
		assertContained(t, tmp)
	})
}
