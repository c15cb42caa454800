package runner

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/gateway/hub"
	"github.com/openshell/openshell/guest/channel/wire"
	"github.com/openshell/openshell/internal/relayframe"
	"github.com/openshell/openshell/supervisor/bootstrap"
	"github.com/openshell/openshell/supervisor/session"
	"github.com/openshell/openshell/supervisor/transfer"
)

const (
	bulkTestSandbox = "sb-bulk"
	bulkTestToken   = "sandbox-token-for-bulk"
)

// hubGateway is the gateway's supervisor side as the gateway serves it (the real
// session hub, its relay pairing and instance checks), with the sandbox token
// checked on every call; relayErrs receives what each RelayStream ended with.
type hubGateway struct {
	pb.UnimplementedOpenShellServer
	h         *hub.Hub
	relays    atomic.Int64
	relayErrs chan error
}

func bulkTokenOK(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if a := md.Get("authorization"); len(a) != 1 || a[0] != "Bearer "+bulkTestToken {
		return status.Error(codes.Unauthenticated, "bad sandbox token")
	}
	return nil
}

func (g *hubGateway) ConnectSupervisor(stream pb.OpenShell_ConnectSupervisorServer) error {
	if err := bulkTokenOK(stream.Context()); err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	inst, err := hub.InstanceFromContext(stream.Context(), first.GetHello().GetInstanceId())
	if err != nil {
		return err
	}
	return g.h.Serve(stream, first.GetHello(), inst)
}

func (g *hubGateway) RelayStream(stream pb.OpenShell_RelayStreamServer) error {
	err := bulkTokenOK(stream.Context())
	if err == nil {
		g.relays.Add(1)
		var first *pb.RelayFrame
		if first, err = stream.Recv(); err == nil {
			var inst hub.Instance
			if inst, err = hub.InstanceFromContext(stream.Context(), ""); err == nil {
				err = g.h.ServeRelay(stream, first.GetInit().GetChannelId(), inst, func(string) error { return nil })
			}
		}
	}
	g.relayErrs <- err
	return err
}

// openRecorder keeps what the supervisor wrote first on its bulk stream (the open
// frame), so the test can replay it.
type openRecorder struct {
	net.Conn
	first chan []byte
	once  atomic.Bool
}

func (c *openRecorder) Write(p []byte) (int, error) {
	if c.once.CompareAndSwap(false, true) {
		c.first <- bytes.Clone(p)
	}
	return c.Conn.Write(p)
}

func (c *openRecorder) CloseWrite() error { return c.Conn.(*net.UnixConn).CloseWrite() }

// TestBulkTransfer runs a file transfer as a VM sandbox does, minus the VM: the
// supervisor's session client (real) gets the gateway hub's (real) transfer relay,
// opens it on the runner's bulk port (gated by the instance preamble, as served in
// Run), and the runner opens the RelayStream on the gateway's sandbox socket for it.
// The upload's tar stream arrives whole through the bulk path; then what an agent
// could try on that port is refused: a stream without this boot's preamble is
// closed unanswered, and a replayed channel id is refused by the gateway.
func TestBulkTransfer(t *testing.T) {
	shortTimeouts(t, time.Second)
	dir := t.TempDir()
	// The gateway: the session hub on a plaintext gRPC Unix socket (the sandbox
	// socket the runner dials).
	h := hub.New(hub.Options{})
	gwSrv := &hubGateway{h: h, relayErrs: make(chan error, 8)}
	gwSock := filepath.Join(dir, "gw.sock")
	gl, err := net.Listen("unix", gwSock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	pb.RegisterOpenShellServer(srv, gwSrv)
	go srv.Serve(gl)
	t.Cleanup(srv.Stop)

	// The runner's bulk port, behind the instance gate.
	secret, err := newInstanceSecret()
	if err != nil {
		t.Fatal(err)
	}
	bl, bulkSock := unixListener(t)
	var logs logBuf
	g := &gate{port: "bulk", limit: 8, secret: secret, box: newStatusBox(Status{}), log: logs.logger(),
		refused: func(s *Status) { s.GatewayRefused++ }}
	bgl := g.listen(bl)
	t.Cleanup(func() { bgl.Close() })
	gw := &gatewayTarget{}
	gw.sock.Store(gwSock)
	gw.addr.Store("")
	boot := &bootstrap.Config{Endpoint: "unix://" + gwSock, Token: bulkTestToken}
	go serveBulk(bgl, boot, gw, logs.logger())

	// The supervisor: its session client, transfers served in-process into dest.
	dest := filepath.Join(dir, "dest")
	if err := os.Mkdir(dest, 0o755); err != nil {
		t.Fatal(err)
	}
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	hostKey, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := session.Dial(session.DialOptions{Endpoint: "unix://" + gwSock, Token: func() (string, error) { return bulkTestToken, nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	opens := make(chan []byte, 4)
	var bulkDials atomic.Int64
	serveTransfer := transfer.InProcess(dest, []string{dest})
	sc, err := session.New(cc, session.Config{
		SandboxID: bulkTestSandbox, InstanceID: session.NewInstanceID(), InstanceSecret: secret.String(),
		HostKey:  hostKey,
		ServeSSH: func(_ context.Context, c net.Conn) { c.Close() },
		ServeTransfer: func(ctx context.Context, c net.Conn, tt *pb.TransferRelayTarget) {
			transfer.ServeRelay(ctx, c, tt, serveTransfer)
		},
		DialBulk: func(ctx context.Context) (net.Conn, error) {
			bulkDials.Add(1)
			var d net.Dialer
			c, err := d.DialContext(ctx, "unix", bulkSock)
			if err != nil {
				return nil, err
			}
			if _, err := c.Write(wire.AppendPreamble(nil, secret)); err != nil {
				c.Close()
				return nil, err
			}
			return &openRecorder{Conn: c, first: opens}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { defer close(runDone); _ = sc.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-runDone })
	for deadline := time.Now().Add(10 * time.Second); !h.Connected(bulkTestSandbox); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the supervisor's session did not come up")
		}
	}

	// An upload of a 3 MiB file and a symlink, as the CLI sends it.
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	blob := bytes.Repeat([]byte("bulk stream "), 3<<20/12)
	if err := os.WriteFile(filepath.Join(src, "blob"), blob, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("blob", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer rcancel()
	conn, err := h.OpenRelay(rctx, bulkTestSandbox, &pb.RelayOpen{Target: &pb.RelayOpen_Transfer{
		Transfer: &pb.TransferRelayTarget{Direction: pb.TransferRelayTarget_DIRECTION_UPLOAD, Path: "."}}})
	if err != nil {
		t.Fatalf("OpenRelay: %v", err)
	}
	replies := make(chan []byte, 1)
	in := transfer.NewFrameReader(conn, true)
	go func() { b, _ := io.ReadAll(in); replies <- b }()
	if err := transfer.WriteTree(transfer.FrameWriter{W: conn}, src, "up", nil, nil); err != nil {
		t.Fatalf("send the tar stream: %v", err)
	}
	if err := transfer.WriteEnd(conn); err != nil {
		t.Fatal(err)
	}
	var reply []byte
	select {
	case reply = <-replies:
	case <-time.After(30 * time.Second):
		t.Fatal("no reply to the upload")
	}
	conn.Close()
	if e := in.Exit(); e == nil || e.Code != 0 {
		t.Fatalf("upload exit %+v, reply %q", e, reply)
	}
	var res transfer.Result
	if err := json.Unmarshal(reply, &res); err != nil {
		t.Fatalf("reply %q: %v", reply, err)
	}
	got, err := os.ReadFile(filepath.Join(dest, "up", "blob"))
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("uploaded blob: %d bytes (want %d), %v", len(got), len(blob), err)
	}
	if l, err := os.Readlink(filepath.Join(dest, "up", "link")); err != nil || l != "blob" {
		t.Fatalf("uploaded symlink: %q %v", l, err)
	}
	if n := bulkDials.Load(); n != 1 {
		t.Fatalf("the supervisor dialed the bulk port %d times; want once (the transfer went another way)", n)
	}
	if err := <-gwSrv.relayErrs; err != nil {
		t.Fatalf("the transfer's RelayStream ended with %v", err)
	}
	var open []byte
	select {
	case open = <-opens:
	default:
		t.Fatal("no open frame was recorded")
	}
	o, err := relayframe.ReadOpen(bytes.NewReader(open))
	if err != nil {
		t.Fatalf("the supervisor's open frame: %v", err)
	}

	// An agent in the guest without this boot's instance secret: the gate closes
	// the stream without an answer and nothing reaches the gateway.
	relays := gwSrv.relays.Load()
	c, err := net.Dial("unix", bulkSock)
	if err != nil {
		t.Fatal(err)
	}
	c.Write(open)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a stream without the preamble: read %d bytes, %v; want it closed unanswered", n, err)
	}
	c.Close()
	if gwSrv.relays.Load() != relays {
		t.Fatal("a stream without the preamble reached the gateway")
	}

	// The same open frame replayed (with the preamble): the channel id paired once,
	// so the gateway refuses the RelayStream and the stream ends without a byte.
	c, err = net.Dial("unix", bulkSock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(wire.AppendPreamble(nil, secret))
	if err := relayframe.WriteOpen(c, o); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := relayframe.ReadOpenReply(c); err != nil {
		t.Fatalf("replayed open: %v (the runner opens the RelayStream; the gateway decides)", err)
	}
	select {
	case err := <-gwSrv.relayErrs:
		if !errors.Is(err, hub.ErrUnknownChannel) {
			t.Fatalf("replayed channel id: the gateway's RelayStream ended with %v; want ErrUnknownChannel", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the gateway did not answer the replayed RelayStream")
	}
	if n, err := c.Read(make([]byte, 1)); n != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("replayed channel id: read %d bytes, %v; want the stream ended", n, err)
	}

	// A malformed open frame is answered with the reason.
	c2, err := net.Dial("unix", bulkSock)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.Write(wire.AppendPreamble(nil, secret))
	c2.Write(append(relayframe.AppendHeader(nil, relayframe.BulkOpen, 2), "{}"...))
	c2.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := relayframe.ReadOpenReply(c2); !errors.Is(err, relayframe.ErrBulkRefused) {
		t.Fatalf("malformed open: %v; want a refusal", err)
	}
}
