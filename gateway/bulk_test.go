package gateway_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/internal/relayframe"
)

// unixPair is a connected pair of Unix stream sockets: the supervisor's end and the
// end the gateway serves (as its bulk socket's accept would give it).
func unixPair(t *testing.T) (sup, gw *net.UnixConn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "bulk")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

// TestSandboxBulkStream: a transfer relay's bytes on a container's bulk socket. A
// user's transfer reaches the supervisor's relay_open; the supervisor's bulk stream
// (token, then open frame) is paired with it and carries bytes both ways. What an
// agent or another container could try is refused with the reason, and leaves the
// relay to its own supervisor: another sandbox's token on this socket, a channel of
// another sandbox, the right channel without the instance's secret, and a replay of
// a channel that already paired.
func TestSandboxBulkStream(t *testing.T) {
	e := startEnv(t, t.TempDir(), drivertest.NewMemDriver())
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	idA := e.create("bulk-a").GetMetadata().GetId()
	idB := e.create("bulk-b").GetMetadata().GetId()
	supA := e.connectSupervisorMode(idA, "iA", "bulk")
	supB := e.connectSupervisorMode(idB, "iB", "bulk")
	e.waitPhase("bulk-a", openshellv1.SandboxPhase_SANDBOX_PHASE_READY)
	e.waitPhase("bulk-b", openshellv1.SandboxPhase_SANDBOX_PHASE_READY)
	tokA, _ := e.issuer.Mint(idA, time.Hour)
	tokB, _ := e.issuer.Mint(idB, time.Hour)

	// transfer opens a user's upload relay to sandbox id and returns its stream once
	// the supervisor got the relay_open (its channel id).
	transfer := func(id string, sup chan string) (openshellv1.OpenShell_ForwardTcpClient, string) {
		t.Helper()
		sess, err := e.user.CreateSshSession(ctx, &openshellv1.CreateSshSessionRequest{SandboxId: id})
		if err != nil {
			t.Fatal(err)
		}
		fs, err := e.user.ForwardTcp(ctx)
		if err != nil {
			t.Fatal(err)
		}
		init := &openshellv1.TcpForwardInit{SandboxId: id, AuthorizationToken: sess.GetToken(),
			Target: &openshellv1.TcpForwardInit_Transfer{Transfer: &openshellv1.TransferRelayTarget{
				Direction: openshellv1.TransferRelayTarget_DIRECTION_UPLOAD, Path: "/sandbox/x"}}}
		if err := fs.Send(&openshellv1.TcpForwardFrame{Payload: &openshellv1.TcpForwardFrame_Init{Init: init}}); err != nil {
			t.Fatal(err)
		}
		select {
		case ch := <-sup:
			return fs, ch
		case <-ctx.Done():
			t.Fatal("the supervisor got no relay_open")
		}
		return nil, ""
	}
	// bulk runs one bulk stream on sandbox socketID's socket: it sends tok and the
	// open frame and returns the supervisor's end and the gateway's answer.
	bulk := func(socketID, tok string, o relayframe.Open) (*net.UnixConn, error) {
		t.Helper()
		sup, gw := unixPair(t)
		served := make(chan error, 1)
		go func() { served <- e.srv.ServeSandboxBulk(gw, socketID) }()
		// A gateway that refuses the token answers and closes before reading
		// the open frame, so writing it may meet a closed socket: the answer
		// is still there to read.
		werr := relayframe.WriteToken(sup, tok)
		if werr == nil {
			werr = relayframe.WriteOpen(sup, o)
		}
		_ = sup.SetReadDeadline(time.Now().Add(10 * time.Second))
		err := relayframe.ReadOpenReply(sup)
		_ = sup.SetReadDeadline(time.Time{})
		if err == nil && werr != nil {
			t.Fatalf("the stream was accepted but writing its frames failed: %v", werr)
		}
		if err != nil {
			// A refused stream is closed: nothing more comes (a reset when the
			// gateway closed with the open frame unread).
			if n, rerr := sup.Read(make([]byte, 1)); n != 0 || !errors.Is(rerr, io.EOF) && !errors.Is(rerr, syscall.ECONNRESET) {
				t.Errorf("after a refusal the stream gave %d bytes, %v; want it closed", n, rerr)
			}
			if serr := <-served; serr == nil {
				t.Error("ServeSandboxBulk returned nil for a refused stream")
			}
		}
		return sup, err
	}
	refused := func(err error, want string) {
		t.Helper()
		if !errors.Is(err, relayframe.ErrBulkRefused) || !strings.Contains(err.Error(), want) {
			t.Fatalf("bulk stream answer %v; want a refusal naming %q", err, want)
		}
	}

	fsA, chA := transfer(idA, supA.opens)
	_, chB := transfer(idB, supB.opens)
	own := relayframe.Open{ChannelID: chA, InstanceID: "iA", InstanceSecret: "secret-of-iA"}

	// Another sandbox's token on A's socket (a container that got hold of B's).
	_, err := bulk(idA, tokB, own)
	refused(err, "may not be used on the bulk socket of sandbox "+idA)
	_, err = bulk(idA, "not-a-token", own)
	refused(err, "sandbox token")
	// B's channel through A's socket, even with B's instance and secret.
	_, err = bulk(idA, tokA, relayframe.Open{ChannelID: chB, InstanceID: "iB", InstanceSecret: "secret-of-iB"})
	refused(err, "another sandbox")
	// A's channel without A's instance secret (the agent does not have it).
	_, err = bulk(idA, tokA, relayframe.Open{ChannelID: chA, InstanceID: "iA", InstanceSecret: "guess"})
	refused(err, "instance")
	// A channel nobody issued.
	_, err = bulk(idA, tokA, relayframe.Open{ChannelID: "made-up", InstanceID: "iA", InstanceSecret: "secret-of-iA"})
	refused(err, "unknown relay channel")

	// The supervisor's own stream pairs (none of the above used the channel up) and
	// carries the relay both ways.
	sup, err := bulk(idA, tokA, own)
	if err != nil {
		t.Fatalf("the supervisor's bulk stream: %v", err)
	}
	if err := fsA.Send(&openshellv1.TcpForwardFrame{Payload: &openshellv1.TcpForwardFrame_Data{Data: []byte("tar stream")}}); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("tar stream"))
	if _, err := io.ReadFull(sup, got); err != nil || string(got) != "tar stream" {
		t.Fatalf("the supervisor read %q, %v", got, err)
	}
	if _, err := sup.Write([]byte("exit frame")); err != nil {
		t.Fatal(err)
	}
	_ = sup.CloseWrite()
	var back []byte
	for {
		f, err := fsA.Recv()
		if err != nil {
			break
		}
		back = append(back, f.GetData()...)
	}
	if string(back) != "exit frame" {
		t.Fatalf("the user received %q, want the supervisor's bytes", back)
	}

	// A replay of the paired channel, with everything else right.
	_, err = bulk(idA, tokA, own)
	refused(err, "unknown relay channel")
	// B's relay is still B's supervisor's to claim.
	_, err = bulk(idB, tokB, relayframe.Open{ChannelID: chB, InstanceID: "iB", InstanceSecret: "secret-of-iB"})
	if err != nil {
		t.Fatalf("B's own bulk stream after the attacks: %v", err)
	}
}
