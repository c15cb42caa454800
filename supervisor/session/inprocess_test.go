package session

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"google.golang.org/grpc"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/internal/instancemd"
	"github.com/openshell/openshell/internal/streamconn"
	"github.com/openshell/openshell/internal/testkeys"
	"github.com/openshell/openshell/supervisor/reaper"
	"github.com/openshell/openshell/supervisor/sandboxuser"
	"github.com/openshell/openshell/supervisor/sshd"
)

// gatewayEnd is the gateway's side of a RelayStream as a streamconn.Stream, so that
// the test speaks SSH over it the way the CLI does over ForwardTcp. CloseSend ends
// the RPC (a server cannot half-close).
type gatewayEnd struct {
	s   grpc.BidiStreamingServer[pb.RelayFrame, pb.RelayFrame]
	end func()
}

func (g gatewayEnd) Send(p []byte) error {
	return g.s.Send(&pb.RelayFrame{Payload: &pb.RelayFrame_Data{Data: p}})
}

func (g gatewayEnd) Recv() ([]byte, error) {
	f, err := g.s.Recv()
	if err != nil {
		return nil, err
	}
	return f.GetData(), nil
}

func (g gatewayEnd) CloseSend() error { g.end(); return nil }

// inProcessSSH runs a Client whose SSH relays are served by the real SSH server
// in-process (ServeSSH, no DialSSH). stop cancels Run and waits for it.
func inProcessSSH(t *testing.T) (g *fakeGateway, s grpc.BidiStreamingServer[pb.SupervisorMessage, pb.GatewayMessage], dir string, stop func()) {
	t.Helper()
	dir = t.TempDir()
	r := reaper.New(false)
	t.Cleanup(func() { r.Close() })
	u := &sandboxuser.User{Name: "me", UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Home: dir, Shell: "/bin/sh"}
	srv, err := sshd.New(sshd.Config{User: u, Env: append([]string{"PATH=/usr/bin:/bin"}, u.Env()...), Dir: dir, Reaper: r})
	if err != nil {
		t.Fatal(err)
	}
	g = newFake()
	addr, _ := serve(t, g, "127.0.0.1:0")
	cc, err := Dial(DialOptions{Endpoint: "http://" + addr, Token: func() (string, error) { return "tok", nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	c, err := New(cc, Config{SandboxID: "sb-1", InstanceID: "inst-1", ServeSSH: srv.ServeConn, HostKey: srv.HostKey()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	select {
	case s = <-g.streams:
	case <-time.After(5 * time.Second):
		t.Fatal("no session")
	}
	return g, s, dir, stop
}

// openSSH asks for an SSH relay (no target = ssh) and returns an SSH client over it
// and a function that ends the RelayStream from the gateway's side.
func openSSH(t *testing.T, g *fakeGateway, s grpc.BidiStreamingServer[pb.SupervisorMessage, pb.GatewayMessage], id string) (*ssh.Client, func()) {
	t.Helper()
	if err := s.Send(&pb.GatewayMessage{Payload: &pb.GatewayMessage_RelayOpen{RelayOpen: &pb.RelayOpen{ChannelId: id}}}); err != nil {
		t.Fatal(err)
	}
	var rc relayCall
	select {
	case rc = <-g.relays:
	case <-time.After(5 * time.Second):
		t.Fatal("no RelayStream")
	}
	if r := <-g.results; !r.GetSuccess() || r.GetChannelId() != id {
		t.Fatalf("relay_open_result %v", r)
	}
	var once sync.Once
	end := func() { once.Do(func() { close(rc.done) }) }
	conn := streamconn.New(rc.stream.Context(), gatewayEnd{s: rc.stream, end: end}, end, "test-gateway")
	// Like the gateway: accept only the key the supervisor registered in its hello.
	sc, chans, reqs, err := ssh.NewClientConn(conn, "sandbox", &ssh.ClientConfig{User: "sandbox", HostKeyCallback: ssh.FixedHostKey(registeredKey(t, g))})
	if err != nil {
		conn.Close()
		t.Fatalf("ssh handshake over the relay: %v", err)
	}
	cl := ssh.NewClient(sc, chans, reqs)
	t.Cleanup(func() { cl.Close() })
	return cl, end
}

// noServerLeft fails unless no in-process SSH connection and no relay conn remain.
func noServerLeft(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		buf := make([]byte, 4<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		if !strings.Contains(stacks, "sshd.(*Server).ServeConn") && !strings.Contains(stacks, "streamconn.(*Conn).sender") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("an SSH connection or relay conn is still running:\n%s", stacks)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitClose(t *testing.T, g *fakeGateway, id string) {
	t.Helper()
	for {
		select {
		case got := <-g.closes:
			if got == id {
				return
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no relay_close for %s from the supervisor", id)
		}
	}
}

func TestInProcessSSHExecPTYAndSFTP(t *testing.T) {
	g, s, dir, stop := inProcessSSH(t)
	cl, _ := openSSH(t, g, s, "ssh-1")

	// Exec without a TTY: output and exit code.
	sess, err := cl.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	sess.Stdout, sess.Stderr = &stdout, &stderr
	err = sess.Run("echo hi; echo err >&2; exit 3")
	var ee *ssh.ExitError
	if !errors.As(err, &ee) || ee.ExitStatus() != 3 || stdout.String() != "hi\n" || stderr.String() != "err\n" {
		t.Fatalf("exec: stdout %q stderr %q, %v (want exit 3)", stdout.String(), stderr.String(), err)
	}

	// With a TTY, and a resize while the program runs.
	sess, err = cl.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.RequestPty("xterm", 24, 80, ssh.TerminalModes{}); err != nil {
		t.Fatal(err)
	}
	stdin, _ := sess.StdinPipe()
	var tty bytes.Buffer
	sess.Stdout = &tty
	if err := sess.Start("read x; stty size; exit 5"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if err := sess.WindowChange(50, 132); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	_, _ = stdin.Write([]byte("\n"))
	if err := sess.Wait(); !errors.As(err, &ee) || ee.ExitStatus() != 5 || !strings.Contains(tty.String(), "50 132") {
		t.Fatalf("tty session: %q, %v (want exit 5 and the new size)", tty.String(), err)
	}

	// SFTP both ways with a file larger than every buffer and queue on the path.
	data := make([]byte, 24<<20+12345)
	_, _ = rand.Read(data)
	fc, err := sftp.NewClient(cl)
	if err != nil {
		t.Fatal(err)
	}
	f, err := fc.Create("big.bin")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadFrom(bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	onDisk, err := os.ReadFile(filepath.Join(dir, "big.bin"))
	if err != nil || sha256.Sum256(onDisk) != sha256.Sum256(data) {
		t.Fatalf("uploaded file differs (%d bytes, %v)", len(onDisk), err)
	}
	rf, err := fc.Open("big.bin")
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := rf.WriteTo(h); err != nil {
		t.Fatal(err)
	}
	rf.Close()
	if [32]byte(h.Sum(nil)) != sha256.Sum256(data) {
		t.Fatal("downloaded file differs")
	}
	fc.Close()

	// The client closing ends the relay: the server connection returns and the
	// supervisor reports relay_close.
	cl.Close()
	waitClose(t, g, "ssh-1")
	noServerLeft(t)
	stop()
}

func TestInProcessSSHEndsWithTheRelay(t *testing.T) {
	g, s, _, stop := inProcessSSH(t)
	start := func(cl *ssh.Client) {
		t.Helper()
		sess, err := cl.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		if err := sess.Start("sleep 600"); err != nil {
			t.Fatal(err)
		}
	}

	// The gateway ends the RelayStream: the SSH connection ends, its program is
	// hung up, and the supervisor says the relay closed.
	cl, end := openSSH(t, g, s, "ssh-end")
	start(cl)
	end()
	waitClose(t, g, "ssh-end")
	noServerLeft(t)

	// relay_close from the gateway tears an in-process SSH relay down.
	cl, _ = openSSH(t, g, s, "ssh-close")
	start(cl)
	if err := s.Send(&pb.GatewayMessage{Payload: &pb.GatewayMessage_RelayClose{RelayClose: &pb.RelayClose{ChannelId: "ssh-close", Reason: "test"}}}); err != nil {
		t.Fatal(err)
	}
	waitClose(t, g, "ssh-close")
	noServerLeft(t)

	// Run ending takes open relays down with it, and waits for them.
	cl, _ = openSSH(t, g, s, "ssh-run")
	start(cl)
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return with an SSH relay open")
	}
	noServerLeft(t)
	// The client sees its connection end.
	waitErr := make(chan error, 1)
	go func() { waitErr <- cl.Wait() }()
	select {
	case <-waitErr:
	case <-time.After(10 * time.Second):
		t.Fatal("the SSH client's connection is still open after Run ended")
	}
}

func TestConfigNeedsAnSSHServer(t *testing.T) {
	err := (&Config{SandboxID: "sb", InstanceID: "i"}).Validate()
	if err == nil || !strings.Contains(err.Error(), "ServeSSH") {
		t.Fatalf("Validate without ServeSSH or DialSSH = %v", err)
	}
	err = (&Config{SandboxID: "sb", InstanceID: "i", ServeSSH: func(context.Context, net.Conn) {}}).Validate()
	if err == nil || !strings.Contains(err.Error(), "HostKey") {
		t.Fatalf("Validate without HostKey = %v", err)
	}
	key := testkeys.SSHPublicKey(t)
	for _, c := range []Config{
		{SandboxID: "sb", InstanceID: "i", ServeSSH: func(context.Context, net.Conn) {}, HostKey: key},
		{SandboxID: "sb", InstanceID: "i", DialSSH: func(context.Context) (net.Conn, error) { return nil, io.EOF }, HostKey: key},
	} {
		if err := c.Validate(); err != nil {
			t.Fatalf("Validate = %v", err)
		}
	}
}

// registeredKey is the SSH host key the client registered with its first hello.
func registeredKey(t *testing.T, g *fakeGateway) ssh.PublicKey {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.md) == 0 {
		t.Fatal("no call recorded")
	}
	raw, err := base64.StdEncoding.DecodeString(strings.Join(g.md[0].Get(instancemd.HostKey), ""))
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.ParsePublicKey(raw)
	if err != nil {
		t.Fatalf("registered host key: %v", err)
	}
	return k
}
