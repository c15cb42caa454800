package sshd

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/supervisor/reaper"
	"github.com/openshell/openshell/supervisor/sandboxuser"
	"github.com/openshell/openshell/supervisor/transfer"
)

// transferServer is a real Server whose transfers re-execute this test binary as the
// tar server: as uid 4321 when the test runs as root (as in a sandbox), else as the
// current user. Uploads may land only below work (the policy's read_write list).
func transferServer(t *testing.T) (srv *Server, base, work string, uid int) {
	t.Helper()
	base, err := os.MkdirTemp("", "sshd-transfer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	work = filepath.Join(base, "work")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(base, "tar-helper")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	var user *sandboxuser.User
	uid = os.Getuid()
	if uid == 0 {
		uid = 4321
		user = &sandboxuser.User{Name: "sbx", UID: 4321, GID: 4321, Home: work, Shell: "/bin/sh"}
		if err := os.Chown(work, 4321, 4321); err != nil {
			t.Fatal(err)
		}
	} else {
		user = sandboxuser.Current(sandboxuser.DB{Root: "/"})
		user.Home = work
	}
	r := reaper.New(false)
	t.Cleanup(func() { r.Close() })
	srv, err = New(Config{User: user, Env: append([]string{"PATH=/usr/bin:/bin"}, user.Env()...), Dir: work, Reaper: r,
		TarArgv: []string{bin, transfer.ServerArg}, Writable: []string{work}})
	if err != nil {
		t.Fatal(err)
	}
	return srv, base, work, uid
}

// relay runs one transfer through ServeTransfer over an in-memory connection, as
// the relay stream carries it: send (framed, then the end frame) goes in, and the
// data and the exit frame come back.
func relay(t *testing.T, srv *Server, dir pb.TransferRelayTarget_Direction, path string, send []byte) ([]byte, *transfer.Exit) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c, sc := connPair(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeTransfer(ctx, sc, &pb.TransferRelayTarget{Direction: dir, Path: path})
	}()
	go func() {
		_, _ = transfer.FrameWriter{W: c}.Write(send)
		_ = transfer.WriteEnd(c)
	}()
	in := transfer.NewFrameReader(c, true)
	out, err := io.ReadAll(in)
	if err != nil {
		t.Fatalf("read the relay: %v", err)
	}
	c.Close()
	<-done
	return out, in.Exit()
}

// connPair makes the two ends of one relay: an in-memory pipe as a RelayStream
// carries it (the server copies through pipes to the tar server), or with
// socketPairs a connected Unix socket pair, as a bulk stream's socket is (the tar
// server serves the socket itself).
var connPair = func(*testing.T) (net.Conn, net.Conn) { return net.Pipe() }

func socketPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var cs [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "relay")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		cs[i] = c
	}
	return cs[0], cs[1]
}

func tarTree(t *testing.T, src, name string) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := transfer.WriteTree(&b, src, name, nil, nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestTransferRelayRoundTripAsSandboxUser: an upload over the transfer relay lands
// as the sandbox user with modes, symlinks and an empty directory kept; a download
// brings the same tree back; a path outside the policy's read_write list, a hostile
// entry and a bad target are refused by name with nothing written outside.
func TestTransferRelayRoundTripAsSandboxUser(t *testing.T) {
	t.Run("relay stream", func(t *testing.T) {
		before := transfersOnSocket.Load()
		transferRoundTrip(t)
		if n := transfersOnSocket.Load() - before; n != 0 {
			t.Fatalf("%d transfers were served on a socket; a RelayStream has none", n)
		}
	})
	t.Run("bulk socket", func(t *testing.T) {
		connPair = socketPair
		defer func() { connPair = func(*testing.T) (net.Conn, net.Conn) { return net.Pipe() } }()
		before := transfersOnSocket.Load()
		transferRoundTrip(t)
		// Every relay but the bad target's (refused before any server starts).
		if n := transfersOnSocket.Load() - before; n != 6 {
			t.Fatalf("%d transfers were served on the socket itself, want 6", n)
		}
	})
}

func transferRoundTrip(t *testing.T) {
	srv, base, work, uid := transferServer(t)
	src := filepath.Join(t.TempDir(), "proj")
	for _, d := range []string{"sub/empty"} {
		if err := os.MkdirAll(filepath.Join(src, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(src, "a.txt"), []byte("alpha"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "sub", "run.sh"), bytes.Repeat([]byte("x"), 3<<20+5), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../a.txt", filepath.Join(src, "sub", "link")); err != nil {
		t.Fatal(err)
	}

	out, exit := relay(t, srv, pb.TransferRelayTarget_DIRECTION_UPLOAD, "dest", tarTree(t, src, "proj"))
	if exit == nil || exit.Code != 0 {
		t.Fatalf("upload exit %+v", exit)
	}
	var res transfer.Result
	if err := json.Unmarshal(out, &res); err != nil || res.Path != filepath.Join(work, "dest") || res.Files != 2 || res.Symlinks != 1 || res.Bytes != 5+3<<20+5 {
		t.Fatalf("upload result %q: %+v %v", out, res, err)
	}
	want := map[string]fs.FileMode{"": fs.ModeDir | 0o755, "a.txt": 0o640, "sub": fs.ModeDir | 0o755, "sub/empty": fs.ModeDir | 0o755,
		"sub/run.sh": 0o755, "sub/link": fs.ModeSymlink | 0o777}
	for rel, mode := range want {
		p := filepath.Join(work, "dest", rel)
		st, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode() != mode {
			t.Errorf("%s mode %v, want %v", rel, st.Mode(), mode)
		}
		if s := st.Sys().(*syscall.Stat_t); int(s.Uid) != uid {
			t.Errorf("%s owned by uid %d, want the sandbox user %d", rel, s.Uid, uid)
		}
	}
	if l, _ := os.Readlink(filepath.Join(work, "dest", "sub", "link")); l != "../a.txt" {
		t.Errorf("symlink target %q", l)
	}

	out, exit = relay(t, srv, pb.TransferRelayTarget_DIRECTION_DOWNLOAD, "dest", nil)
	if exit == nil || exit.Code != 0 {
		t.Fatalf("download exit %+v", exit)
	}
	line, rest, _ := bytes.Cut(out, []byte("\n"))
	var hdr transfer.Header
	if err := json.Unmarshal(line, &hdr); err != nil || hdr.Bytes != 5+3<<20+5 {
		t.Fatalf("download header %q: %v", line, err)
	}
	back := t.TempDir()
	root, err := os.OpenRoot(back)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if res, err := transfer.Extract(root, "", bytes.NewReader(rest), nil); err != nil || res.Files != 2 || res.Symlinks != 1 {
		t.Fatalf("downloaded tree: %+v %v", res, err)
	}
	if b, _ := os.ReadFile(filepath.Join(back, "dest", "sub", "run.sh")); len(b) != 3<<20+5 {
		t.Fatalf("downloaded run.sh has %d bytes", len(b))
	}

	// Outside read_write: refused naming the rule, nothing written.
	_, exit = relay(t, srv, pb.TransferRelayTarget_DIRECTION_UPLOAD, filepath.Join(base, "outside"), tarTree(t, src, "proj"))
	if exit == nil || exit.Code == 0 || !strings.Contains(exit.Error, "read_write") {
		t.Fatalf("upload outside read_write: %+v", exit)
	}
	if _, err := os.Lstat(filepath.Join(base, "outside")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("refused upload left %s: %v", filepath.Join(base, "outside"), err)
	}

	// Hostile entries: refused with the entry named, nothing outside the target.
	for _, h := range []*tar.Header{
		{Name: "../evil", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1},
		{Name: "/abs", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1},
		{Name: "dev", Typeflag: tar.TypeChar, Mode: 0o644, Devmajor: 1, Devminor: 3},
	} {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			_, _ = tw.Write([]byte("x"))
		}
		_ = tw.Close()
		_, exit = relay(t, srv, pb.TransferRelayTarget_DIRECTION_UPLOAD, "hostile", b.Bytes())
		if exit == nil || exit.Code == 0 || !strings.Contains(exit.Error, h.Name) {
			t.Errorf("hostile entry %q: %+v, want a refusal naming it", h.Name, exit)
		}
	}
	if ents, _ := os.ReadDir(base); len(ents) != 2 { // work and tar-helper only
		t.Errorf("entries beside work after hostile uploads: %v", ents)
	}

	// A bad target is answered in the exit frame, not with a dropped relay.
	_, exit = relay(t, srv, pb.TransferRelayTarget_DIRECTION_UNSPECIFIED, "x", nil)
	if exit == nil || exit.Code == 0 || !strings.Contains(exit.Error, "DIRECTION_UPLOAD") {
		t.Fatalf("unspecified direction: %+v", exit)
	}
}
