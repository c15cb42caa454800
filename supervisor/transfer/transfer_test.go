package transfer

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as the re-executed transfer server (as the supervisor
// binary's "tar-server" does).
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == ServerArg {
		os.Exit(Main(os.Args[2:]))
	}
	os.Exit(m.Run())
}

var mtime = time.Date(2024, 3, 5, 10, 20, 30, 0, time.UTC)

// makeTree builds a tree with modes, mtimes, symlinks (one leaving the tree) and an
// empty directory.
func makeTree(t *testing.T, dir string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "sub", "empty"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "a.txt"), []byte("alpha"), 0o640))
	must(os.WriteFile(filepath.Join(dir, "sub", "run.sh"), []byte("#!/bin/sh\necho hi\n"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "sub", "big"), bytes.Repeat([]byte("x"), 3<<20+17), 0o600))
	must(os.Symlink("../a.txt", filepath.Join(dir, "sub", "rel-link")))
	must(os.Symlink("/etc/hostname", filepath.Join(dir, "abs-link")))
	must(os.Chmod(filepath.Join(dir, "sub", "empty"), 0o700))
	must(os.Chmod(filepath.Join(dir, "sub"), 0o750))
	for _, p := range []string{"a.txt", "sub/run.sh", "sub/big", "sub/empty", "sub", "."} {
		must(os.Chtimes(filepath.Join(dir, p), mtime, mtime.Add(time.Duration(len(p))*time.Second)))
	}
}

type entry struct {
	mode  fs.FileMode
	mtime int64
	data  string
	link  string
}

func snapshot(t *testing.T, dir string) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		e := entry{mode: info.Mode()}
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			e.link, _ = os.Readlink(p)
		case info.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			e.data = string(b)
			e.mtime = info.ModTime().Unix()
		case info.IsDir():
			e.mtime = info.ModTime().Unix()
		}
		out[rel] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestRoundTripKeepsModesSymlinksEmptyDirsMtimes(t *testing.T) {
	src := filepath.Join(t.TempDir(), "proj")
	makeTree(t, src)
	var buf bytes.Buffer
	var read int64
	if err := WriteTree(&buf, src, "proj", nil, func(n int64) { read += n }); err != nil {
		t.Fatal(err)
	}
	size, err := Size(src, nil)
	if err != nil || size != read || size != 5+18+3<<20+17 {
		t.Fatalf("Size = %d, %v; bytes read %d", size, err, read)
	}
	for _, as := range []string{"", "renamed"} {
		dst := t.TempDir()
		root, err := os.OpenRoot(dst)
		if err != nil {
			t.Fatal(err)
		}
		res, err := Extract(root, as, bytes.NewReader(buf.Bytes()), nil)
		root.Close()
		if err != nil {
			t.Fatalf("as %q: %v", as, err)
		}
		name := "proj"
		if as != "" {
			name = as
		}
		if res.Path != name || res.Files != 3 || res.Dirs != 3 || res.Symlinks != 2 || res.Bytes != size {
			t.Fatalf("as %q: result %+v", as, res)
		}
		want, got := snapshot(t, src), snapshot(t, filepath.Join(dst, name))
		if len(got) != len(want) {
			t.Fatalf("as %q: %d entries, want %d: %v", as, len(got), len(want), got)
		}
		for k, w := range want {
			if g := got[k]; g != w {
				t.Errorf("as %q: %s = %+v, want %+v", as, k, g, w)
			}
		}
	}
}

// serveAs runs the transfer server re-executed as uid/gid (as the supervisor runs it
// as the sandbox user).
func serveAs(t *testing.T, uid uint32, req Request, in []byte, writable []string) (stdout, stderr string, err error) {
	t.Helper()
	w, _ := json.Marshal(writable)
	rq, _ := json.Marshal(req)
	cmd := exec.Command(testBin(t), ServerArg, string(w))
	cmd.Env = append(os.Environ(), EnvRequest+"="+string(rq))
	cmd.Stdin = bytes.NewReader(in)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if uid != uint32(os.Getuid()) {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	}
	err = cmd.Run()
	return o.String(), e.String(), err
}

// openDir is a temporary directory other users can enter (t.TempDir's parent is
// private to root).
func openDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "transfer-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// testBin is a copy of the test binary that another user may execute.
func testBin(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(openDir(t), "transfer.test")
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestUploadAsSandboxUserOwnsFiles(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to switch to another user (the supervisor runs as root)")
	}
	const uid = 23456
	src := filepath.Join(t.TempDir(), "proj")
	makeTree(t, src)
	var buf bytes.Buffer
	if err := WriteTree(&buf, src, "proj", nil, nil); err != nil {
		t.Fatal(err)
	}
	base := openDir(t)
	home := filepath.Join(base, "home")
	if err := os.Mkdir(home, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(home, uid, uid); err != nil {
		t.Fatal(err)
	}
	out, stderr, err := serveAs(t, uid, Request{Op: OpUpload, Path: filepath.Join(home, "dest")}, buf.Bytes(), []string{home})
	if err != nil {
		t.Fatalf("upload: %v: %s", err, stderr)
	}
	var res Result
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Path != filepath.Join(home, "dest") || res.Files != 3 {
		t.Fatalf("result %q: %v", out, err)
	}
	n := 0
	err = filepath.WalkDir(filepath.Join(home, "dest"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, _ := d.Info()
		st := info.Sys().(*syscall.Stat_t)
		if st.Uid != uid || st.Gid != uid {
			t.Errorf("%s is owned by %d:%d, want the sandbox user %d", p, st.Uid, st.Gid, uid)
		}
		n++
		return nil
	})
	if err != nil || n != 8 {
		t.Fatalf("walked %d entries: %v", n, err)
	}
	// The same user cannot write where its own permissions do not reach, and a
	// path outside the writable list is refused before anything is written.
	_, stderr, err = serveAs(t, uid, Request{Op: OpUpload, Path: filepath.Join(base, "x")}, buf.Bytes(), []string{home})
	if err == nil || !strings.Contains(stderr, "not writable for the agent") || !strings.Contains(stderr, "read_write") {
		t.Fatalf("upload outside the writable list: err %v, stderr %q", err, stderr)
	}
	if _, err := os.Lstat(filepath.Join(base, "x")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("refused upload left %s behind: %v", filepath.Join(base, "x"), err)
	}
	// A directory the user cannot even open (as Landlock makes paths outside the
	// policy) still gets the policy's explanation, not a bare EACCES.
	private := filepath.Join(base, "private")
	if err := os.Mkdir(private, 0o700); err != nil {
		t.Fatal(err)
	}
	_, stderr, err = serveAs(t, uid, Request{Op: OpUpload, Path: filepath.Join(private, "x")}, buf.Bytes(), []string{home})
	if err == nil || !strings.Contains(stderr, "not writable for the agent") {
		t.Fatalf("upload into an unreadable directory outside the policy: err %v, stderr %q", err, stderr)
	}
	// Download reads as the user too and round-trips the tree.
	out, stderr, err = serveAs(t, uid, Request{Op: OpDownload, Path: filepath.Join(home, "dest")}, nil, nil)
	if err != nil {
		t.Fatalf("download: %v: %s", err, stderr)
	}
	hdr, rest, _ := strings.Cut(out, "\n")
	var h Header
	if err := json.Unmarshal([]byte(hdr), &h); err != nil || h.Bytes != 5+18+3<<20+17 {
		t.Fatalf("download header %q: %v", hdr, err)
	}
	back := t.TempDir()
	root, _ := os.OpenRoot(back)
	defer root.Close()
	if _, err := Extract(root, "", strings.NewReader(rest), nil); err != nil {
		t.Fatal(err)
	}
	want, got := snapshot(t, src), snapshot(t, filepath.Join(back, "dest"))
	for k, w := range want {
		if got[k] != w {
			t.Errorf("download %s = %+v, want %+v", k, got[k], w)
		}
	}
}

type tarEntry struct {
	name, link string
	typ        byte
	body       string
}

func tarOf(t testing.TB, es ...tarEntry) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: 0o644, Size: int64(len(e.body)), ModTime: mtime}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			_, _ = tw.Write([]byte(e.body))
		}
	}
	_ = tw.Close()
	return buf.Bytes()
}

// listAll names every path below dir.
func listAll(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	_ = filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err == nil {
			out = append(out, strings.TrimPrefix(p, dir))
		}
		return nil
	})
	return out
}

func TestBadEntriesRefusedNothingWrittenOutside(t *testing.T) {
	dir := func(n string) tarEntry { return tarEntry{name: n, typ: tar.TypeDir} }
	file := func(n string) tarEntry { return tarEntry{name: n, typ: tar.TypeReg, body: "pwned"} }
	cases := []struct {
		name    string
		entries []tarEntry
		bad     string // the entry the error must name
		why     string
	}{
		{"dotdot", []tarEntry{dir("t/"), file("../evil")}, "../evil", ".."},
		{"inner dotdot", []tarEntry{dir("t/"), file("t/../../evil")}, "t/../../evil", ".."},
		{"absolute", []tarEntry{dir("t/"), file("/tmp/evil")}, "/tmp/evil", "absolute"},
		{"char device", []tarEntry{dir("t/"), {name: "t/null", typ: tar.TypeChar}}, "t/null", "device"},
		{"block device", []tarEntry{dir("t/"), {name: "t/sda", typ: tar.TypeBlock}}, "t/sda", "device"},
		{"fifo", []tarEntry{dir("t/"), {name: "t/fifo", typ: tar.TypeFifo}}, "t/fifo", "FIFO"},
		{"hard link out", []tarEntry{dir("t/"), {name: "t/pw", typ: tar.TypeLink, link: "../outside/secret"}}, "t/pw", ".."},
		{"hard link absolute", []tarEntry{dir("t/"), {name: "t/pw", typ: tar.TypeLink, link: "/etc/passwd"}}, "t/pw", "absolute"},
		{"hard link other tree", []tarEntry{dir("t/"), {name: "t/pw", typ: tar.TypeLink, link: "u/x"}}, "t/pw", "outside the tree"},
		{"second tree", []tarEntry{dir("t/"), file("u")}, "u", "outside the tree"},
		{"write through absolute symlink", []tarEntry{dir("t/"), {name: "t/out", typ: tar.TypeSymlink, link: "OUTSIDE"}, file("t/out/pwn")}, "t/out/pwn", "escapes"},
		{"write through relative symlink", []tarEntry{dir("t/"), {name: "t/up", typ: tar.TypeSymlink, link: "../../outside"}, file("t/up/pwn")}, "t/up/pwn", "escapes"},
		{"file onto symlink out", []tarEntry{dir("t/"), {name: "t/f", typ: tar.TypeSymlink, link: "OUTSIDE/secret"}, file("t/f")}, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base := t.TempDir()
			outside := filepath.Join(base, "outside")
			target := filepath.Join(base, "target")
			for _, d := range []string{outside, target} {
				if err := os.Mkdir(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("keep"), 0o600); err != nil {
				t.Fatal(err)
			}
			for i := range c.entries {
				c.entries[i].link = strings.ReplaceAll(c.entries[i].link, "OUTSIDE", outside)
			}
			before := listAll(t, base)
			root, err := os.OpenRoot(target)
			if err != nil {
				t.Fatal(err)
			}
			_, err = Extract(root, "", bytes.NewReader(tarOf(t, c.entries...)), nil)
			root.Close()
			if c.bad != "" {
				var ee *EntryError
				if !errors.As(err, &ee) || ee.Entry != c.bad || !strings.Contains(err.Error(), c.why) {
					t.Fatalf("err = %v; want an EntryError naming %q (%s)", err, c.bad, c.why)
				}
			} else if err != nil {
				t.Fatalf("replacing a symlink by a file: %v", err)
			}
			// Nothing outside the target changed: the same paths and the secret intact.
			var after []string
			for _, p := range listAll(t, base) {
				if !strings.HasPrefix(p, "/target/") {
					after = append(after, p)
				}
			}
			var beforeOut []string
			for _, p := range before {
				if !strings.HasPrefix(p, "/target/") {
					beforeOut = append(beforeOut, p)
				}
			}
			if strings.Join(after, ",") != strings.Join(beforeOut, ",") {
				t.Fatalf("paths outside the target changed: before %v, after %v", beforeOut, after)
			}
			if b, _ := os.ReadFile(filepath.Join(outside, "secret")); string(b) != "keep" {
				t.Fatalf("outside file changed to %q", b)
			}
			if _, err := os.Lstat(filepath.Join(filepath.Dir(base), "evil")); err == nil {
				t.Fatal("an entry landed next to the test's base directory")
			}
		})
	}
}

func TestRequestAndWritableErrorsNameTheFix(t *testing.T) {
	for in, want := range map[string]string{
		"":                             EnvRequest,
		`{"op":"move","path":"/x"}`:    `"move"`,
		`{"op":"upload","path":""}`:    "path is empty",
		`{"op":"upload"`:               EnvRequest,
		`{"op":"download","path":"a"}`: "",
	} {
		_, err := ParseRequest(in)
		if (want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), want)) {
			t.Errorf("ParseRequest(%q) = %v, want mention of %q", in, err, want)
		}
	}
	if err := CheckWritable("/sandboxes/x", []string{"/sandbox"}); err == nil {
		t.Error("a sibling with the same prefix passed the writable check")
	}
	if err := CheckWritable("/sandbox/x/y", []string{"/tmp", "/sandbox/"}); err != nil {
		t.Error(err)
	}
	if err := CheckWritable("/etc/x", nil); err != nil {
		t.Error("nil writable list (unconfined) refused a path:", err)
	}
}

func FuzzCleanName(f *testing.F) {
	for _, s := range []string{"a", "a/b/", "../x", "/abs", "a/../b", "./a", ".", "a\x00b", "a//b", "..", "..."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		c, err := CleanName(name)
		if err != nil {
			return
		}
		if c != "." && !filepath.IsLocal(c) {
			t.Fatalf("CleanName(%q) = %q, not local", name, c)
		}
		if strings.Contains("/"+c+"/", "/../") || strings.HasPrefix(c, "/") {
			t.Fatalf("CleanName(%q) = %q leaves the target", name, c)
		}
	})
}

// FuzzExtract feeds arbitrary tar streams (seeded with the hostile ones) to Extract
// and checks that nothing ever appears outside the target directory.
//
// Each new input the fuzzer finds interesting is minimized first (up to
// -test.fuzzminimizetime, not counted in execs/sec); a tar stream is blocks with
// checksums, so almost no byte can be removed and minimizing tries them all. At
// 2.9 ms per exec (a zeroed 1 MiB copy buffer per stream, a t.TempDir on disk) that
// was 30 s and more of apparent stall per input. Now Extract sizes its buffer to the
// files (0.57 ms per exec), the scratch directory is on tmpfs and made once per
// worker, streams are capped at maxFuzzStream, and minimizing stops after 500 execs
// unless -test.fuzzminimizetime is given. Measured: ~4,000 execs/s sustained, where it sat at 0/s for 30 s.
func FuzzExtract(f *testing.F) {
	f.Add(tarOf(f, tarEntry{name: "t/", typ: tar.TypeDir}, tarEntry{name: "t/a", typ: tar.TypeReg, body: "x"}))
	f.Add(tarOf(f, tarEntry{name: "t/", typ: tar.TypeDir}, tarEntry{name: "t/l", typ: tar.TypeSymlink, link: "../.."}, tarEntry{name: "t/l/x", typ: tar.TypeReg, body: "x"}))
	f.Add(tarOf(f, tarEntry{name: "t/h", typ: tar.TypeLink, link: "../x"}))
	f.Add(tarOf(f, tarEntry{name: "../x", typ: tar.TypeReg, body: "x"}))
	f.Add([]byte("not a tar stream"))
	shortMinimize(f)
	scratch := scratchDir(f)
	f.Fuzz(func(t *testing.T, stream []byte) {
		if len(stream) > maxFuzzStream {
			return
		}
		base, err := os.MkdirTemp(scratch, "x")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(base)
		target := filepath.Join(base, "target")
		if err := os.Mkdir(target, 0o755); err != nil {
			t.Fatal(err)
		}
		root, err := os.OpenRoot(target)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = Extract(root, "", bytes.NewReader(stream), nil)
		root.Close()
		ents, err := os.ReadDir(base)
		if err != nil {
			t.Fatal(err)
		}
		if len(ents) != 1 || ents[0].Name() != "target" {
			t.Fatalf("entries outside the target: %v", ents)
		}
		_ = filepath.WalkDir(target, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				_ = os.Chmod(p, 0o755) // let RemoveAll clean up read-only directories
			}
			return nil
		})
	})
}

// maxFuzzStream bounds a fuzzed tar stream: 16 blocks hold several entries with
// bodies and PAX records, which is all the extraction logic branches on.
const maxFuzzStream = 16 * 512

// scratchDir is a directory for fuzz execs, on tmpfs when there is one.
func scratchDir(f *testing.F) string {
	parent := ""
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		parent = "/dev/shm"
	}
	d, err := os.MkdirTemp(parent, "transfer-fuzz-")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

// shortMinimize bounds -test.fuzzminimizetime to 500 execs unless it was given.
func shortMinimize(f *testing.F) {
	given := false
	flag.Visit(func(fl *flag.Flag) { given = given || fl.Name == "test.fuzzminimizetime" })
	if !given && flag.Lookup("test.fuzzminimizetime") != nil {
		if err := flag.Set("test.fuzzminimizetime", "500x"); err != nil {
			f.Fatal(err)
		}
	}
}

// An upload below a directory that does not exist: outside what the policy lets the
// agent write it is refused by the policy rule (not by ENOENT, which would hide
// why), also through a symlinked ancestor that resolves outside; inside, the error
// says the directory is missing and how to fix it.
func TestUploadMissingParentNamesPolicyFirst(t *testing.T) {
	base := t.TempDir()
	writable := filepath.Join(base, "sandbox")
	outside := filepath.Join(base, "var")
	for _, d := range []string{writable, outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// A link inside the writable dir that points out of it.
	if err := os.Symlink(outside, filepath.Join(writable, "out")); err != nil {
		t.Fatal(err)
	}
	rw := []string{writable}
	for _, c := range []struct {
		name, path string
		want       []string
	}{
		{"outside the policy", filepath.Join(outside, "tmp", "up.txt"), []string{"read_write", "not writable"}},
		{"through a link out", filepath.Join(writable, "out", "tmp", "up.txt"), []string{"read_write", outside}},
		{"inside the policy", filepath.Join(writable, "new", "up.txt"), []string{"does not exist", "create it first"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var out bytes.Buffer
			err := Serve(Request{Op: OpUpload, Path: c.path}, "", bytes.NewReader(nil), &out, rw)
			if err == nil {
				t.Fatal("upload below a missing directory succeeded")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(c.name, "outside") || strings.Contains(c.name, "out") {
				if strings.Contains(err.Error(), "no such file") {
					t.Errorf("the policy refusal is reported as a missing directory: %v", err)
				}
			}
		})
	}
}
