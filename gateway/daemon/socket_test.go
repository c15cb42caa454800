package daemon

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/drivers/grpcdriver"
	"github.com/openshell/openshell/gateway/clientconf"
	"github.com/openshell/openshell/gateway/config"
	"github.com/openshell/openshell/gateway/pki"
	"github.com/openshell/openshell/internal/grpcopts"
	"github.com/openshell/openshell/internal/rundir"
	"github.com/openshell/openshell/internal/testenv"
)

// memDriverSocket serves an in-process MemDriver on a Unix socket in dir.
func memDriverSocket(t *testing.T, dir string) string {
	t.Helper()
	sock := filepath.Join(dir, "d.sock")
	lis, err := grpcdriver.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { grpcdriver.Serve(sctx, lis, drivertest.NewMemDriver()); close(served) }()
	t.Cleanup(func() { scancel(); <-served })
	return sock
}

func tempDir(t *testing.T) string {
	t.Helper()
	// Short, and reachable by other uids once opened (t.TempDir's parents are 0700).
	dir, err := os.MkdirTemp("", "gws")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func startTLSGateway(t *testing.T, tmp string, edit func(*config.Config)) (*Gateway, *config.Config) {
	t.Helper()
	cfg := config.Defaults()
	cfg.StateDir = filepath.Join(tmp, "state")
	cfg.Port = 0
	cfg.ComputeDriverSocket = memDriverSocket(t, tmp)
	if edit != nil {
		edit(&cfg)
	}
	if cfg.Socket == "" {
		t.Cleanup(func() { os.RemoveAll(rundir.For(cfg.StateDir)) })
	}
	g, err := Start(t.Context(), &cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Stop(5 * time.Second) })
	return g, &cfg
}

func socketStat(t *testing.T, path string) (os.FileMode, *syscall.Stat_t) {
	t.Helper()
	st, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("%s is %v, not a socket", path, st.Mode())
	}
	return st.Mode().Perm(), st.Sys().(*syscall.Stat_t)
}

// A local gateway serves its API on a 0600 socket in the short runtime dir; a
// registration with that socket needs no client certificate (the kernel names the
// caller), one whose socket is gone falls back to TCP with mTLS, and TCP without a
// client certificate is refused.
func TestLocalSocketAndTCPFallback(t *testing.T) {
	tmp := tempDir(t)
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(tmp, "cfg"))
	g, cfg := startTLSGateway(t, tmp, nil)
	if g.SocketPath == "" || g.SocketPath != cfg.SocketPath() || !strings.HasSuffix(g.SocketPath, "/gateway.sock") {
		t.Fatalf("socket %q, config says %q", g.SocketPath, cfg.SocketPath())
	}
	mode, st := socketStat(t, g.SocketPath)
	if mode != 0o600 || st.Uid != uint32(os.Geteuid()) {
		t.Errorf("socket mode %v owner %d, want 0600 owned by %d", mode, st.Uid, os.Geteuid())
	}
	if dm, _ := os.Stat(filepath.Dir(g.SocketPath)); dm.Mode().Perm() != 0o700 {
		t.Errorf("socket dir mode %v, want 0700", dm.Mode().Perm())
	}

	// Registration: socket + https endpoint, no client files at all.
	if _, err := clientconf.WriteEndpoint("loc", "https://"+g.Addr.String()); err != nil {
		t.Fatal(err)
	}
	if err := clientconf.WriteSocket("loc", g.SocketPath); err != nil {
		t.Fatal(err)
	}
	reg, err := clientconf.Load("loc")
	if err != nil || reg.Socket != "unix://"+g.SocketPath {
		t.Fatalf("load: %+v %v", reg, err)
	}
	cc, err := reg.Dial(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	c := openshellv1.NewOpenShellClient(cc)
	if _, err := c.CreateSandbox(t.Context(), &openshellv1.CreateSandboxRequest{Name: "overunix", Spec: &openshellv1.SandboxSpec{}}); err != nil {
		t.Fatalf("create over the socket without a client certificate: %v", err)
	}
	if _, err := c.DeleteSandbox(t.Context(), &openshellv1.DeleteSandboxRequest{Name: "overunix"}); err != nil {
		t.Fatalf("delete over the socket: %v", err)
	}
	cc.Close()

	// The socket is absent: the same registration goes over TCP, which wants the
	// client certificate it does not have.
	if err := clientconf.WriteSocket("loc", filepath.Join(tmp, "gone.sock")); err != nil {
		t.Fatal(err)
	}
	reg, _ = clientconf.Load("loc")
	if _, err := reg.Dial(t.Context()); err == nil {
		t.Fatal("TCP fallback without client files: no error")
	}
	// With the client files it works over TCP + mTLS.
	b, err := pki.Ensure(PKIDir(cfg.StateDir), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteClientDir(b, reg.Dir); err != nil {
		t.Fatal(err)
	}
	cc, err = reg.Dial(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, err := openshellv1.NewOpenShellClient(cc).ListSandboxes(t.Context(), &openshellv1.ListSandboxesRequest{}); err != nil {
		t.Fatalf("fallback to TCP+mTLS: %v", err)
	}
	if _, err := clientconf.WriteEndpoint("loc", "https://"+g.Addr.String()); err != nil {
		t.Fatal(err)
	}
	// The server is reached over TLS but without a client certificate: refused.
	checkNoCertRefused(t, g.Addr.String(), b)

	// A second gateway may not take over a live socket.
	cfg2 := *cfg
	cfg2.StateDir = filepath.Join(tmp, "state2")
	cfg2.Socket = g.SocketPath
	if g2, err := Start(t.Context(), &cfg2, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil {
		g2.Stop(time.Second)
		t.Fatal("second gateway took over a served socket")
	} else if !strings.Contains(err.Error(), "another running gateway") {
		t.Errorf("err = %v", err)
	}

	path := g.SocketPath
	if err := g.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, filepath.Dir(path)} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s left after stop: %v", p, err)
		}
	}
}

func checkNoCertRefused(t *testing.T, addr string, b *pki.Bundle) {
	t.Helper()
	tc := b.ClientTLSConfig()
	tc.Certificates = nil
	tc.GetClientCertificate = nil
	cc, err := grpc.NewClient("passthrough:///"+addr, grpcopts.Dial(grpcopts.TLS(tc))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	_, err = openshellv1.NewOpenShellClient(cc).ListSandboxes(t.Context(), &openshellv1.ListSandboxesRequest{})
	// The TLS handshake succeeds (the certificate is optional for sandboxes, which
	// carry tokens); the user method is then refused for want of credentials.
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "client certificate") {
		t.Fatalf("TCP without a client certificate: %v, want Unauthenticated", err)
	}
}

// childEnv marks the test binary re-run as a socket client.
const childEnv = "OPENSHELL_TEST_SOCKET_CLIENT"

// TestSocketClientChild is the client run under another uid: it lists sandboxes over
// the socket and prints OK or the error's code and message.
func TestSocketClientChild(t *testing.T) {
	path := os.Getenv(childEnv)
	if path == "" {
		t.Skip("helper for TestSocketRefusesOtherUsers")
	}
	g := &clientconf.Gateway{Name: "child", Endpoint: "unix://" + path}
	cc, err := g.Dial(context.Background())
	if err == nil {
		_, err = openshellv1.NewOpenShellClient(cc).ListSandboxes(context.Background(), &openshellv1.ListSandboxesRequest{})
		cc.Close()
	}
	if err == nil {
		fmt.Println("RESULT OK")
	} else {
		fmt.Printf("RESULT %s %s\n", status.Code(err), err)
	}
}

// asUser runs the client child with the given credentials and returns its result line.
func asUser(t *testing.T, bin, sock string, cred *syscall.Credential) string {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), bin, "-test.run=^TestSocketClientChild$", "-test.v")
	cmd.Env = []string{childEnv + "=" + sock, "HOME=/", "PATH=/usr/bin:/bin"}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	out, _ := cmd.CombinedOutput()
	for _, l := range strings.Split(string(out), "\n") {
		if r, ok := strings.CutPrefix(l, "RESULT "); ok {
			return r
		}
	}
	t.Fatalf("child printed no result:\n%s", out)
	return ""
}

// testBinary copies this test binary where another uid may run it.
func testBinary(t *testing.T, dir string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "client.test")
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// Another uid is kept out of the socket by its mode; if the mode is loosened, the
// gateway still refuses it by its kernel credentials, naming the uid and the fix.
// With socket_group set, the socket is 0660 with that group and members (primary or
// supplementary) are administrators; non-members still are not.
func TestSocketRefusesOtherUsers(t *testing.T) {
	testenv.RequireRoot(t)
	tmp := tempDir(t)
	if err := os.Chmod(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := testBinary(t, tmp)
	const nobody, nogroup, users = 65534, 65534, 100
	stranger := &syscall.Credential{Uid: nobody, Gid: nogroup, Groups: []uint32{}}
	member := &syscall.Credential{Uid: nobody, Gid: nogroup, Groups: []uint32{users}}
	primary := &syscall.Credential{Uid: nobody, Gid: users, Groups: []uint32{}}

	sock := filepath.Join(tmp, "gw.sock")
	g, _ := startTLSGateway(t, tmp, func(c *config.Config) { c.Socket = sock })
	if mode, st := socketStat(t, sock); mode != 0o600 || st.Uid != 0 {
		t.Errorf("socket %v uid %d, want 0600 root", mode, st.Uid)
	}
	if r := asUser(t, bin, sock, stranger); !strings.Contains(r, "permission denied") || !strings.Contains(r, "uid 65534") || !strings.Contains(r, "socket_group") {
		t.Errorf("other uid through a 0600 socket: %s", r)
	}
	// An administrator's mistake: the socket opened to everyone.
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	if r := asUser(t, bin, sock, stranger); !strings.HasPrefix(r, "PermissionDenied") || !strings.Contains(r, "uid 65534 may not use the gateway socket") {
		t.Errorf("other uid through a 0666 socket: %s", r)
	}
	if err := g.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}

	// socket_group, on the default path in the runtime dir (its directories must let
	// the group through).
	if st, err := os.Stat(rundir.Base()); err == nil {
		t.Cleanup(func() { os.Chmod(rundir.Base(), st.Mode().Perm()) })
	}
	tmp2 := tempDir(t)
	g2, cfg2 := startTLSGateway(t, tmp2, func(c *config.Config) { c.SocketGroup = "users" })
	mode, st := socketStat(t, g2.SocketPath)
	if mode != 0o660 || st.Gid != users || st.Uid != 0 {
		t.Errorf("group socket %v %d:%d, want 0660 0:%d", mode, st.Uid, st.Gid, users)
	}
	if g2.SocketPath != cfg2.SocketPath() {
		t.Errorf("socket %s, want %s", g2.SocketPath, cfg2.SocketPath())
	}
	for name, cred := range map[string]*syscall.Credential{"supplementary member": member, "primary member": primary} {
		if r := asUser(t, bin, g2.SocketPath, cred); r != "OK" {
			t.Errorf("%s: %s", name, r)
		}
	}
	if r := asUser(t, bin, g2.SocketPath, stranger); !strings.Contains(r, "permission denied") || !strings.Contains(r, "uid 65534") {
		t.Errorf("non-member: %s", r)
	}
	// Loosened by mistake, socket and directory: the peer check still refuses.
	for p, m := range map[string]os.FileMode{g2.SocketPath: 0o666, filepath.Dir(g2.SocketPath): 0o711} {
		if err := os.Chmod(p, m); err != nil {
			t.Fatal(err)
		}
	}
	if r := asUser(t, bin, g2.SocketPath, stranger); !strings.HasPrefix(r, "PermissionDenied") || !strings.Contains(r, "add the user to group users") {
		t.Errorf("non-member through a 0666 socket: %s", r)
	}

	// A configured path whose directory the gateway makes: passable by the group.
	tmp3 := tempDir(t)
	if err := os.Chmod(tmp3, 0o755); err != nil {
		t.Fatal(err)
	}
	sock3 := filepath.Join(tmp3, "new", "gw.sock")
	startTLSGateway(t, tmp3, func(c *config.Config) { c.Socket, c.SocketGroup = sock3, "100" })
	if st, err := os.Stat(filepath.Dir(sock3)); err != nil || st.Mode().Perm() != 0o710 || st.Sys().(*syscall.Stat_t).Gid != users {
		t.Errorf("made socket dir: %v %v", st.Mode(), err)
	}
	if r := asUser(t, bin, sock3, member); r != "OK" {
		t.Errorf("member, configured path: %s", r)
	}
}

// remoteEnv marks the test binary re-run inside its own network namespace.
const remoteEnv = "OPENSHELL_TEST_REMOTE_NETNS"

// remoteAddr is a documentation address given to an interface inside a network
// namespace this test makes: a non-loopback address that no other host has.
const remoteAddr = "198.51.100.7"

// A gateway on --bind-address with a non-loopback address of its host serves remote
// clients over TCP with mTLS: a client certificate works, none is refused. Run in a
// private network namespace so the address is this test's alone.
func TestRemoteMTLS(t *testing.T) {
	if os.Getenv(remoteEnv) == "" {
		testenv.RequireRoot(t)
		cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestRemoteMTLS$", "-test.v")
		cmd.Env = append(os.Environ(), remoteEnv+"=1")
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestRemoteMTLS") {
			t.Fatalf("in a network namespace: %v\n%s", err, out)
		}
		return
	}
	// The namespace's own loopback device carries the address (no dummy or veth
	// driver is needed); it is still a non-loopback address to the gateway.
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr(remoteAddr + "/32")
	if err := netlink.AddrAdd(lo, addr); err != nil {
		t.Fatal(err)
	}
	tmp := tempDir(t)
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(tmp, "cfg"))
	g, cfg := startTLSGateway(t, tmp, func(c *config.Config) { c.BindAddress = remoteAddr; c.Socket = "none" })
	if g.SocketPath != "" {
		t.Errorf("socket none still serves %s", g.SocketPath)
	}
	if h, _, _ := net.SplitHostPort(g.Addr.String()); h != remoteAddr {
		t.Fatalf("listening on %s", g.Addr)
	}
	dir, err := clientconf.WriteEndpoint("remote", "https://"+g.Addr.String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := pki.Ensure(PKIDir(cfg.StateDir), CertHosts(cfg))
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteClientDir(b, dir); err != nil {
		t.Fatal(err)
	}
	reg, err := clientconf.Load("remote")
	if err != nil {
		t.Fatal(err)
	}
	cc, err := reg.Dial(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := openshellv1.NewOpenShellClient(cc)
	if _, err := c.CreateSandbox(t.Context(), &openshellv1.CreateSandboxRequest{Name: "remote", Spec: &openshellv1.SandboxSpec{}}); err != nil {
		t.Fatalf("remote create with a client certificate: %v", err)
	}
	checkNoCertRefused(t, g.Addr.String(), b)
	// The server certificate names the address: a client that verifies it connects.
	tc := b.ClientTLSConfig()
	conn, err := tls.Dial("tcp", g.Addr.String(), tc)
	if err != nil {
		t.Fatalf("TLS to %s: %v", g.Addr, err)
	}
	conn.Close()
}
