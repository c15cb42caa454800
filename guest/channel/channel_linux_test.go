package channel

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func fakeSys(t *testing.T) (ports, devs string) {
	t.Helper()
	root := t.TempDir()
	oldP, oldD, oldDev := virtioPortsDir, virtioDevsDir, devDir
	virtioPortsDir = filepath.Join(root, "virtio-ports")
	virtioDevsDir = filepath.Join(root, "virtio-devices")
	devDir = filepath.Join(root, "dev")
	detected.Store(nil)
	t.Cleanup(func() { virtioPortsDir, virtioDevsDir, devDir = oldP, oldD, oldDev; detected.Store(nil) })
	for _, d := range []string{virtioPortsDir, virtioDevsDir, devDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return virtioPortsDir, virtioDevsDir
}

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestDetect(t *testing.T) {
	ports, devs := fakeSys(t)
	if _, err := Detect(); !errors.Is(err, ErrNoChannel) {
		t.Fatalf("empty sysfs: %v", err)
	}
	write(t, filepath.Join(devs, "virtio0", "device"), "0x0002\n") // a block device
	write(t, filepath.Join(ports, "vport0p1", "name"), "other\n")
	if _, err := Detect(); !errors.Is(err, ErrNoChannel) {
		t.Fatalf("no vsock, no openshell port: %v", err)
	}
	write(t, filepath.Join(ports, "vport1p2", "name"), "openshell.0\n")
	if tr, err := Detect(); err != nil || tr != TransportSerial {
		t.Fatalf("serial port: %q %v", tr, err)
	}
	// A vsock device wins when both exist.
	write(t, filepath.Join(devs, "virtio1", "device"), "0x0013\n")
	if tr, err := Detect(); err != nil || tr != TransportVsock {
		t.Fatalf("vsock device: %q %v", tr, err)
	}
	p, err := SerialPort()
	if err != nil || p != filepath.Join(devDir, "vport1p2") {
		t.Fatalf("SerialPort = %q, %v", p, err)
	}
}

// tcpPair is a TCP connection over loopback: its near and far ends.
func tcpPair(t *testing.T) (near, far net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if near, err = net.Dial("tcp", ln.Addr().String()); err != nil {
		t.Fatal(err)
	}
	if far, err = ln.Accept(); err != nil {
		t.Fatal(err)
	}
	return near, far
}

// TestTransportResetIsAHostReturn: a connection that fails with ECONNRESET (what the
// guest kernel makes of a vsock transport reset, the mark of a restore on
// vhost-vsock) reports one host return, however many connections fail with it at
// once; one that reads EOF (a host end that closed it) reports none. The resets here
// are real ones, of TCP connections over loopback, through the same error wrapping.
func TestTransportResetIsAHostReturn(t *testing.T) {
	returns := hostReturns.subscribe(t.Context())
	lastReset.Store(0)
	// conn's far end closes at once, resetting the connection or not.
	conn := func(reset bool) net.Conn {
		t.Helper()
		c, far := tcpPair(t)
		if reset {
			_ = far.(*net.TCPConn).SetLinger(0)
		}
		_ = far.Close()
		return resetNoticing{c}
	}
	got := func(within time.Duration) bool {
		select {
		case <-returns:
			return true
		case <-time.After(within):
			return false
		}
	}
	buf := make([]byte, 8)
	c := conn(false)
	if _, err := c.Read(buf); !errors.Is(err, io.EOF) {
		t.Fatalf("closed by the far end: read %v, want EOF", err)
	}
	c.Close()
	if got(200 * time.Millisecond) {
		t.Fatal("a connection closed by the host end reported a host return")
	}
	for i := range 3 {
		c := conn(true)
		time.Sleep(20 * time.Millisecond)
		if _, err := c.Read(buf); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("reset %d: read %v, want ECONNRESET", i, err)
		}
		c.Close()
		if r := got(200 * time.Millisecond); r != (i == 0) {
			t.Fatalf("reset %d: host return reported %v, want it for the first reset only", i, r)
		}
	}
	// A reset after the quiet time is another restore.
	lastReset.Store(time.Now().Add(-resetQuiet).UnixNano())
	c = conn(true)
	time.Sleep(20 * time.Millisecond)
	_, _ = c.Write([]byte("x"))
	_, _ = c.Read(buf)
	c.Close()
	if !got(time.Second) {
		t.Fatal("a reset after the quiet time reported no host return")
	}
}

// The wrapper keeps what relays use of the socket: half-closes and the raw socket.
func TestResetNoticingKeepsTheSocket(t *testing.T) {
	raw, far := tcpPair(t)
	defer far.Close()
	var c net.Conn = resetNoticing{raw}
	defer c.Close()
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		t.Fatal("no CloseWrite")
	}
	if _, ok := c.(syscall.Conn); !ok {
		t.Fatal("no SyscallConn")
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	// The far end sees the end of the stream, and can still answer.
	if _, err := far.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("far end read %v after CloseWrite, want EOF", err)
	}
	if _, err := far.Write([]byte("ok")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 2)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "ok" {
		t.Fatalf("read after CloseWrite: %q %v", b, err)
	}
}
