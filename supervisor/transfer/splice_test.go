package transfer

import (
	"archive/tar"
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A download served into a pipe (the re-executed server's stdout) splices large
// files into it; the stream is byte for byte the one written without splicing, and
// it extracts to the same tree.
func TestDownloadIntoPipeSplicesSameStream(t *testing.T) {
	src := filepath.Join(t.TempDir(), "proj")
	makeTree(t, src)
	// A large file whose size is not a multiple of the tar block, another just at
	// the splice threshold, and an empty one.
	odd := bytes.Repeat([]byte("0123456789"), 70_000)
	if err := os.WriteFile(filepath.Join(src, "odd.bin"), odd, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "edge.bin"), bytes.Repeat([]byte{7}, spliceMin), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "empty"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"odd.bin", "edge.bin", "empty", "."} {
		// Whole seconds: tar keeps mtimes to the second.
		if err := os.Chtimes(filepath.Join(src, n), mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	req := Request{Op: OpDownload, Path: src}

	var plain bytes.Buffer
	if err := Serve(req, "", nil, &plain, nil); err != nil {
		t.Fatal(err)
	}

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if sw := newSpliceWriter(w); sw.pipe == nil {
		t.Fatal("newSpliceWriter did not see a pipe in os.Pipe's write end")
	}
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(r)
		got <- b
	}()
	serr := Serve(req, "", nil, w, nil)
	w.Close()
	spliced := <-got
	if serr != nil {
		t.Fatal(serr)
	}
	if !bytes.Equal(spliced, plain.Bytes()) {
		t.Fatalf("the spliced stream (%d bytes) differs from the plain one (%d bytes)", len(spliced), plain.Len())
	}

	br := bufio.NewReader(bytes.NewReader(spliced))
	line, err := br.ReadBytes('\n')
	if err != nil {
		t.Fatal(err)
	}
	var hdr Header
	if err := json.Unmarshal(line, &hdr); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	root, err := os.OpenRoot(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	res, err := Extract(root, "", br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Bytes != hdr.Bytes || res.Files != 6 {
		t.Fatalf("extracted %+v; header said %d bytes, want 6 files", res, hdr.Bytes)
	}
	want, have := snapshot(t, src), snapshot(t, filepath.Join(dst, "proj"))
	for k, e := range want {
		if g := have[k]; g.mode != e.mode || g.mtime != e.mtime || g.link != e.link || g.data != e.data {
			t.Errorf("%s: mode %v mtime %d link %q, %d bytes; want mode %v mtime %d link %q, %d bytes (same data: %v)",
				k, g.mode, g.mtime, g.link, len(g.data), e.mode, e.mtime, e.link, len(e.data), g.data == e.data)
		}
	}
	if len(have) != len(want) {
		t.Errorf("%d entries, want %d", len(have), len(want))
	}
}

// splice stops at the end of a file shorter than asked and says how much it moved
// (WriteTree then fails the file as having changed size, rather than send a stream
// shorter than its header announced).
func TestSpliceStopsAtFileEnd(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, bytes.Repeat([]byte{1}, 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	go io.Copy(io.Discard, r)
	n, err := splice(w, f, 5000)
	w.Close()
	if err != nil || n != 1000 {
		t.Fatalf("splice of a 1000-byte file asked for 5000: n=%d err=%v; want 1000 and no error (the caller checks the size)", n, err)
	}
}

// Where the kernel will not splice (here: neither end is a pipe) splice moves
// nothing and says so, and WriteTree copies instead.
func TestSpliceRefusedFallsBack(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dst, err := os.Create(filepath.Join(dir, "dst"))
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if n, err := splice(dst, f, 4); n != 0 || !errors.Is(err, errNoSplice) {
		t.Fatalf("splice into a regular file: n=%d err=%v; want 0 and errNoSplice", n, err)
	}
}

// serveUploadFromPipe runs an upload whose tar stream arrives on a pipe (as the
// re-executed server's stdin), so large files are spliced into place.
func serveUploadFromPipe(t *testing.T, stream []byte, dst string) (Result, error) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, ok := newSpliceReader(r).(*spliceReader); !ok {
		t.Fatal("newSpliceReader did not see a pipe in os.Pipe's read end")
	}
	go func() {
		_, _ = w.Write(stream)
		w.Close()
	}()
	var out bytes.Buffer
	err = Serve(Request{Op: OpUpload, Path: dst}, "", r, &out, nil)
	var res Result
	if err == nil {
		err = json.Unmarshal(out.Bytes(), &res)
	}
	return res, err
}

// An upload from a pipe splices large files into place and extracts the same tree
// as one read through the process; the tar reader's bookkeeping stays right for the
// entries after a spliced file.
func TestUploadFromPipeSplices(t *testing.T) {
	src := filepath.Join(t.TempDir(), "proj")
	makeTree(t, src)
	odd := bytes.Repeat([]byte("abcdefghij"), 70_001)
	if err := os.WriteFile(filepath.Join(src, "odd.bin"), odd, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"odd.bin", "."} {
		if err := os.Chtimes(filepath.Join(src, n), mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	var stream bytes.Buffer
	if err := WriteTree(&stream, src, "proj", nil, nil); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	res, err := serveUploadFromPipe(t, stream.Bytes(), dst)
	if err != nil {
		t.Fatal(err)
	}
	size, _ := Size(src, nil)
	if res.Files != 4 || res.Bytes != size {
		t.Fatalf("result %+v; want 4 files, %d bytes", res, size)
	}
	want, have := snapshot(t, src), snapshot(t, filepath.Join(dst, "proj"))
	for k, e := range want {
		if g := have[k]; g.mode != e.mode || g.mtime != e.mtime || g.link != e.link || g.data != e.data {
			t.Errorf("%s: mode %v mtime %d link %q, %d bytes; want mode %v mtime %d link %q, %d bytes (same data: %v)",
				k, g.mode, g.mtime, g.link, len(g.data), e.mode, e.mtime, e.link, len(e.data), g.data == e.data)
		}
	}
	if len(have) != len(want) {
		t.Errorf("%d entries, want %d", len(have), len(want))
	}
}

// Hostile streams through the splice path: a large file cut short fails the upload;
// an entry leaving the target after a spliced file is still refused by name and
// nothing lands outside.
func TestUploadFromPipeRefusals(t *testing.T) {
	big := string(bytes.Repeat([]byte{'b'}, 600<<10))
	whole := tarOf(t, tarEntry{name: "top/", typ: tar.TypeDir}, tarEntry{name: "top/big", typ: tar.TypeReg, body: big})
	cut := whole[:512*2+300<<10] // the headers and half the file
	if _, err := serveUploadFromPipe(t, cut, t.TempDir()); err == nil || !strings.Contains(err.Error(), "top/big") {
		t.Fatalf("a stream cut inside a spliced file: %v; want an error naming top/big", err)
	}

	parent := t.TempDir()
	dst := filepath.Join(parent, "in")
	if err := os.Mkdir(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	evil := tarOf(t, tarEntry{name: "top/", typ: tar.TypeDir}, tarEntry{name: "top/big", typ: tar.TypeReg, body: big},
		tarEntry{name: "top/../../escape", typ: tar.TypeReg, body: "x"})
	_, err := serveUploadFromPipe(t, evil, dst)
	var ee *EntryError
	if !errors.As(err, &ee) || ee.Entry != "top/../../escape" {
		t.Fatalf("an escaping entry after a spliced file: %v; want an EntryError naming it", err)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "top", "big")); err != nil || string(b) != big {
		t.Fatalf("the spliced file before the refusal: %d bytes, %v", len(b), err)
	}
	if _, err := os.Stat(filepath.Join(parent, "escape")); err == nil {
		t.Fatal("the escaping entry was written outside the target")
	}
}
