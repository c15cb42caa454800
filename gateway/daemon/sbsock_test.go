package daemon

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/internal/relayframe"
	"github.com/openshell/openshell/internal/rundir"
)

// testSockets makes the per-sandbox sockets of a gateway whose state dir is state
// (each test's own), logging to log (nil = nowhere); closed and removed after the test.
func testSockets(t *testing.T, state string, log *slog.Logger) *sandboxSockets {
	t.Helper()
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	m, err := newSandboxSockets(state, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); os.RemoveAll(rundir.For(state)) })
	return m
}

// startRecording starts m with servers that close each connection and say which
// sandbox it was bound to: accepted for the gRPC sockets ("" = not bound to one),
// bulkFrom for the bulk streams.
func startRecording(m *sandboxSockets) (accepted, bulkFrom chan string) {
	accepted, bulkFrom = make(chan string, 4), make(chan string, 4)
	m.start(func(l net.Listener) {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			var id string
			if sc, ok := c.(*sandboxConn); ok {
				id = sc.id
			}
			c.Close()
			accepted <- id
		}
	}, func(c *net.UnixConn, id string) { c.Close(); bulkFrom <- id })
	return accepted, bulkFrom
}

// The per-sandbox sockets: private modes, connections bound to their sandbox, a
// socket re-created in place (with the owner a driver gave its directory) after
// a restart, removal at delete and of directories nobody knows.
func TestSandboxSockets(t *testing.T) {
	state := t.TempDir()
	m := testSockets(t, state, slog.Default())
	accepted, bulkFrom := startRecording(m)
	dir, err := m.Open("sb-a")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, drivers.GatewaySocketName)
	if len(sock) > 107 {
		t.Fatalf("socket path %d bytes, over sun_path", len(sock))
	}
	dst, _ := os.Stat(dir)
	sst, err := os.Stat(sock)
	if err != nil || dst.Mode().Perm() != 0o700 || sst.Mode().Perm() != 0o600 {
		t.Fatalf("dir %v socket %v (%v), want 0700 and 0600", dst.Mode().Perm(), sst.Mode(), err)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if id := <-accepted; id != "sb-a" {
		t.Fatalf("accepted connection bound to %q, want sb-a", id)
	}
	// The bulk socket beside it: as private, and its streams bound to sb-a too.
	bulk := filepath.Join(dir, relayframe.BulkSocketName)
	if bst, err := os.Stat(bulk); err != nil || bst.Mode().Perm() != 0o600 || bst.Mode()&os.ModeSocket == 0 {
		t.Fatalf("bulk socket %v (%v), want a 0600 socket", bst, err)
	}
	bc, err := net.Dial("unix", bulk)
	if err != nil {
		t.Fatal(err)
	}
	bc.Close()
	if id := <-bulkFrom; id != "sb-a" {
		t.Fatalf("bulk stream on sb-a's socket served as %q", id)
	}
	other, _ := m.Open("sb-b")
	if other == dir {
		t.Fatal("two sandboxes share a directory")
	}

	// A restart: the old gateway's sockets close; a driver had given sb-a's
	// directory to another user (a rootless engine's), so the new socket is theirs.
	if os.Geteuid() == 0 {
		if err := os.Chown(dir, 4242, 4242); err != nil {
			t.Fatal(err)
		}
	}
	m.Close()
	m2 := testSockets(t, state, slog.Default())
	m2.start(func(l net.Listener) {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}, func(c *net.UnixConn, _ string) { c.Close() })
	if d2, err := m2.Open("sb-a"); err != nil || d2 != dir {
		t.Fatalf("re-open: %s %v, want %s", d2, err, dir)
	}
	sst, err = os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if uid := sst.Sys().(*syscall.Stat_t).Uid; uid != 4242 {
			t.Fatalf("re-created socket owned by %d, want the directory's owner 4242", uid)
		}
		if bst, err := os.Stat(filepath.Join(dir, relayframe.BulkSocketName)); err != nil || bst.Sys().(*syscall.Stat_t).Uid != 4242 {
			t.Fatalf("re-created bulk socket %v (%v), want it owned by the directory's owner 4242", bst, err)
		}
		if pst, _ := os.Stat(filepath.Dir(dir)); pst.Mode().Perm()&0o001 == 0 {
			t.Fatalf("%s is %v: the directory's owner cannot pass to mount it", filepath.Dir(dir), pst.Mode().Perm())
		}
	}
	m2.Prune(map[string]bool{"sb-a": true})
	if _, err := os.Stat(other); !os.IsNotExist(err) {
		t.Fatalf("directory of an unknown sandbox left: %v", err)
	}
	m2.Remove("sb-a")
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("directory after Remove: %v", err)
	}
}

// A sandbox that opens more bulk streams than maxBulkStreams at once (never naming a
// relay) has the extra ones closed at once; once one ends, a new one is served.
func TestSandboxBulkStreamLimit(t *testing.T) {
	defer func(n int) { maxBulkStreams = n }(maxBulkStreams)
	maxBulkStreams = 2
	m := testSockets(t, t.TempDir(), nil)
	held := make(chan *net.UnixConn, 8)
	m.start(func(l net.Listener) { <-make(chan struct{}) }, func(c *net.UnixConn, _ string) {
		held <- c
		buf := make([]byte, 1)
		_, _ = c.Read(buf) // served until the client hangs up
		c.Close()
	})
	dir, err := m.Open("sb-limit")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, relayframe.BulkSocketName)
	dial := func() net.Conn {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	first := dial()
	dial()
	<-held
	<-held
	extra := dial()
	_ = extra.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := extra.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("a third stream over the limit of 2: read %d, %v; want it closed (EOF)", n, err)
	}
	// The slot frees once the server has seen the first stream end, which the
	// client cannot observe: a new stream is served within a deadline.
	first.Close()
	deadline := time.After(10 * time.Second)
	for {
		c := dial()
		closed := make(chan struct{})
		go func() { _, _ = c.Read(make([]byte, 1)); close(closed) }()
		select {
		case <-held:
			return
		case <-closed: // still over the limit: refused, try again
		case <-deadline:
			t.Fatal("a stream after one ended was not served")
		}
	}
}

// A socket that cannot be made is named in the error, path and kind: the gateway
// socket fails the sandbox's Open, the bulk socket only its transfers' fast path.
func TestSandboxSocketErrorsNameTheSocket(t *testing.T) {
	var logged bytes.Buffer
	var logMu sync.Mutex
	m := testSockets(t, t.TempDir(), slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logged}, nil)))
	// Something that is no socket and cannot be removed (a non-empty directory)
	// where each socket goes.
	block := func(id, name string) string {
		p := filepath.Join(m.Dir(id), name)
		if err := os.MkdirAll(filepath.Join(p, "x"), 0o700); err != nil {
			t.Fatal(err)
		}
		return p
	}
	gw := block("sb-gw", drivers.GatewaySocketName)
	if _, err := m.Open("sb-gw"); err == nil || !strings.Contains(err.Error(), "gateway socket "+gw+":") {
		t.Fatalf("Open with %s blocked: %v; want an error naming the gateway socket and its path", gw, err)
	}
	bulk := block("sb-bulk", relayframe.BulkSocketName)
	if _, err := m.Open("sb-bulk"); err != nil {
		t.Fatalf("Open with only the bulk socket blocked: %v; want the sandbox served without it", err)
	}
	logMu.Lock()
	out := logged.String()
	logMu.Unlock()
	if !strings.Contains(out, "bulk socket "+bulk+":") || strings.Contains(out, "gateway socket") {
		t.Fatalf("log %q: want the bulk socket and its path named, not the gateway socket", out)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// Sockets opened before the gRPC server is up (a restarted gateway re-opens its
// sandboxes' sockets first) are served once it is: both kinds, each bound to its
// sandbox; one removed in between is not.
func TestSandboxSocketsOpenedBeforeStart(t *testing.T) {
	m := testSockets(t, t.TempDir(), nil)
	dirA, err := m.Open("sb-a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Open("sb-gone"); err != nil {
		t.Fatal(err)
	}
	m.Remove("sb-gone")
	// Before start a connection waits in the listen queue.
	early, err := net.Dial("unix", filepath.Join(dirA, drivers.GatewaySocketName))
	if err != nil {
		t.Fatal(err)
	}
	defer early.Close()
	accepted, bulkFrom := startRecording(m)
	bc, err := net.Dial("unix", filepath.Join(dirA, relayframe.BulkSocketName))
	if err != nil {
		t.Fatal(err)
	}
	defer bc.Close()
	for _, ch := range []chan string{accepted, bulkFrom} {
		select {
		case id := <-ch:
			if id != "sb-a" {
				t.Fatalf("served as %q, want sb-a", id)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a socket opened before start was not served after it")
		}
	}
	if c, err := net.Dial("unix", filepath.Join(m.Dir("sb-gone"), drivers.GatewaySocketName)); err == nil {
		c.Close()
		t.Fatal("the socket of a sandbox removed before start still answers")
	}
}
