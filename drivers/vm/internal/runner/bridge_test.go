package runner

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// tcpTarget is a bridge target without a sandbox socket: the gateway's TCP address.
func tcpTarget(addr string) *gatewayTarget {
	g := &gatewayTarget{}
	g.addr.Store(addr)
	return g
}

// A gateway that comes back while the bridge waits gets the guest's connection; one
// that stays away fails it once patience runs out.
func TestBridgeDialWaitsForGateway(t *testing.T) {
	// Reserve a port, free it, and listen there again only after a while: the gateway
	// restarting on its old address.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	gw := tcpTarget(addr)
	back := make(chan net.Listener, 1)
	go func() {
		time.Sleep(700 * time.Millisecond)
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Error(err)
		}
		back <- l
	}()
	start := time.Now()
	c, got, err := bridgeDial(gw, 4*time.Second)
	if err != nil {
		t.Fatalf("bridgeDial while the gateway restarts: %v", err)
	}
	c.Close()
	if l := <-back; l != nil {
		l.Close()
	}
	if got != addr || time.Since(start) < 600*time.Millisecond {
		t.Fatalf("connected to %s after %v; want %s once it listens again", got, time.Since(start), addr)
	}

	// Nobody comes back: an error after about the patience, not before.
	start = time.Now()
	if c, _, err := bridgeDial(gw, 500*time.Millisecond); err == nil {
		c.Close()
		t.Fatal("bridgeDial to an address nobody listens on succeeded")
	}
	if d := time.Since(start); d < 500*time.Millisecond || d > 3*time.Second {
		t.Fatalf("gave up after %v; want about the 500ms patience", d)
	}
}

// With a sandbox socket the bridge dials it and never the TCP address; a gateway that
// restarts re-creates the socket at the same path, and the waiting bridge gets through.
func TestBridgeDialSandboxSocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "gateway.sock")
	// A TCP listener that must not be used: the spec's address stays set beside the socket.
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	gw := &gatewayTarget{}
	gw.sock.Store(sock)
	gw.addr.Store(tl.Addr().String())

	back := make(chan net.Listener, 1)
	go func() {
		time.Sleep(500 * time.Millisecond)
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Error(err)
		}
		back <- l
	}()
	start := time.Now()
	c, got, err := bridgeDial(gw, 4*time.Second)
	if err != nil {
		t.Fatalf("bridgeDial while the gateway re-creates its socket: %v", err)
	}
	l := <-back
	defer l.Close()
	if got != sock || time.Since(start) < 400*time.Millisecond {
		t.Fatalf("connected to %s after %v; want %s once it exists", got, time.Since(start), sock)
	}
	// The bytes arrive on the socket's listener.
	srv, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if _, err := c.Write([]byte("PRI")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	b, _ := io.ReadAll(srv)
	if string(b) != "PRI" {
		t.Fatalf("socket side read %q, want PRI", b)
	}

	// The socket goes away with the gateway: the bridge fails rather than fall back to TCP.
	l.Close()
	os.Remove(sock)
	if c, got, err := bridgeDial(gw, 300*time.Millisecond); err == nil {
		c.Close()
		t.Fatalf("bridgeDial without the socket reached %s", got)
	}
}

// The spec names where the guest's sessions go: a socket dir, a TCP address or both
// (the socket wins); neither, or a relative dir, is refused naming the fields.
func TestSpecGatewayTarget(t *testing.T) {
	base := func() *Spec {
		return &Spec{SandboxID: "sb-1", Machine: MachineSpec{VCPUs: 1, MemoryMiB: 256, Kernel: "k", Initrd: "i", ImageDisk: "a", Disk: "b"}}
	}
	s := base()
	s.GatewaySocketDir = "/run/openshell/x/sb/abc"
	if err := s.Validate(); err != nil {
		t.Fatalf("socket dir only: %v", err)
	}
	if got, want := s.GatewaySocket(), "/run/openshell/x/sb/abc/gateway.sock"; got != want {
		t.Fatalf("GatewaySocket() = %q, want %q", got, want)
	}
	s = base()
	s.GatewayAddr = "127.0.0.1:1"
	if err := s.Validate(); err != nil || s.GatewaySocket() != "" {
		t.Fatalf("TCP only: err %v, socket %q", err, s.GatewaySocket())
	}
	for _, c := range []struct{ dir, want string }{
		{"", "gateway_addr and gateway_socket_dir are both empty"},
		{"run/sb", `gateway_socket_dir "run/sb" must be an absolute path`},
	} {
		s := base()
		s.GatewaySocketDir = c.dir
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("socket dir %q: error %v, want it to say %q", c.dir, err, c.want)
		}
	}
}
