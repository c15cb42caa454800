package session

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/internal/relayframe"
	"github.com/openshell/openshell/internal/testkeys"
	"github.com/openshell/openshell/supervisor/transfer"
)

// bulkClient starts a session client with the given bulk dialer against a fake
// gateway; its transfers report on the returned channel whether they were served
// on a bulk stream (a Unix connection) or on the session's RelayStream.
func bulkClient(t *testing.T, dial func(context.Context) (net.Conn, error)) (grpc.BidiStreamingServer[pb.SupervisorMessage, pb.GatewayMessage], *fakeGateway, <-chan bool) {
	t.Helper()
	g := newFake()
	addr, _ := serve(t, g, "127.0.0.1:0")
	cc := dialPlain(t, addr)
	onBulk := make(chan bool, 4)
	c, _ := runClient(t, cc, Config{SandboxID: "sb-1", InstanceID: "inst-1", DialSSH: echoSSH(t), HostKey: testkeys.SSHPublicKey(t),
		ServeTransfer: func(_ context.Context, conn net.Conn, _ *pb.TransferRelayTarget) {
			_, unix := conn.(*net.UnixConn)
			onBulk <- unix
			// Served until the gateway's end closes: a relay torn down at once could
			// end before the fake gateway saw its RelayStream.
			_, _ = io.Copy(io.Discard, conn)
		},
		DialBulk: dial,
	})
	select {
	case s := <-g.streams:
		waitUntil(t, 5*time.Second, "Up", c.Up)
		return s, g, onBulk
	case <-time.After(5 * time.Second):
		t.Fatal("no session")
	}
	return nil, nil, nil
}

// transferVia opens transfer relay id and says whether the supervisor served it on a
// bulk stream.
func transferVia(t *testing.T, s grpc.BidiStreamingServer[pb.SupervisorMessage, pb.GatewayMessage], g *fakeGateway, onBulk <-chan bool, id string) bool {
	t.Helper()
	if err := s.Send(&pb.GatewayMessage{Payload: &pb.GatewayMessage_RelayOpen{RelayOpen: &pb.RelayOpen{ChannelId: id,
		Target: &pb.RelayOpen_Transfer{Transfer: &pb.TransferRelayTarget{Direction: pb.TransferRelayTarget_DIRECTION_UPLOAD, Path: "."}}}}}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-g.results:
		if !r.GetSuccess() || r.GetChannelId() != id {
			t.Fatalf("relay_open_result %v", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no relay_open_result", id)
	}
	var bulk bool
	select {
	case bulk = <-onBulk:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: the transfer was not served", id)
	}
	if !bulk {
		select {
		case rc := <-g.relays:
			close(rc.done)
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: served over the session without a RelayStream", id)
		}
	}
	return bulk
}

// A container's bulk socket that is missing when a transfer comes (a gateway
// without it, or one restarting) is dialed again on the next transfer: once the
// socket is there, transfers use it, and while it is absent they are not slowed.
func TestBulkSocketComesBack(t *testing.T) {
	dir := t.TempDir()
	dial := transfer.GatewaySocketBulk("unix://"+filepath.Join(dir, "gateway.sock"), func() (string, error) { return "tok-123", nil })
	var dials atomic.Int64
	s, g, onBulk := bulkClient(t, func(ctx context.Context) (net.Conn, error) {
		dials.Add(1)
		return dial(ctx)
	})

	for i, id := range []string{"absent-1", "absent-2"} {
		start := time.Now()
		if transferVia(t, s, g, onBulk, id) {
			t.Fatalf("%s went over a bulk stream; there is no bulk socket", id)
		}
		if n := dials.Load(); n != int64(i+1) {
			t.Fatalf("after %s: %d bulk dials, want %d", id, n, i+1)
		}
		t.Logf("%s over the session in %v", id, time.Since(start))
	}

	// The socket appears, served as the gateway serves it: token, open frame, reply.
	ln, err := net.Listen("unix", filepath.Join(dir, relayframe.BulkSocketName))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	opened := make(chan string, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tok, err := relayframe.ReadToken(c)
			if err == nil && tok != "tok-123" {
				err = errors.New("wrong token " + tok)
			}
			var o relayframe.Open
			if err == nil {
				o, err = relayframe.ReadOpen(c)
			}
			_ = relayframe.WriteOpenReply(c, err)
			if err == nil {
				opened <- o.ChannelID
			}
			c.Close()
		}
	}()
	if !transferVia(t, s, g, onBulk, "present") {
		t.Fatal("the transfer after the bulk socket appeared went over the session")
	}
	select {
	case id := <-opened:
		if id != "present" {
			t.Fatalf("the bulk stream opened channel %q, want present", id)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the bulk socket saw no open frame")
	}
}

// A bulk dial that fails slowly (a VM's vsock port nobody serves) is not tried on
// the next transfer: that transfer goes over the session without waiting.
func TestSlowBulkFailureRests(t *testing.T) {
	var dials atomic.Int64
	s, g, onBulk := bulkClient(t, func(ctx context.Context) (net.Conn, error) {
		dials.Add(1)
		select {
		case <-time.After(200 * time.Millisecond): // over bulkSlowDial
		case <-ctx.Done():
		}
		return nil, os.ErrDeadlineExceeded
	})
	for _, id := range []string{"slow-1", "slow-2", "slow-3"} {
		if transferVia(t, s, g, onBulk, id) {
			t.Fatalf("%s went over a bulk stream", id)
		}
	}
	if n := dials.Load(); n != 1 {
		t.Fatalf("%d bulk dials after a slow failure; want 1 (later transfers must not wait on it again)", n)
	}
}
