package streamconn_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/internal/streamconn"
)

// peer is a real gRPC server with the two byte-stream RPCs. The first frame names
// what the server does (ForwardTcp: sandbox_id, RelayStream: channel_id):
//
//	echo   send every frame back; end the stream at the client's EOF
//	sum    read to EOF, then send the hex SHA-256 of the bytes and end
//	discard read to EOF, then send "ok" and end
//	stall  never read; end when the client cancels
//	frames send a 3-byte frame, an empty one, a non-data frame and a 100-byte one, then end
type peer struct {
	pb.UnimplementedOpenShellServer

	mu     sync.Mutex
	frames []int // sizes of the frames "sum" received
}

type serverStream struct {
	recv func() (data []byte, err error)
	send func([]byte) error
	// other sends a frame that carries no data.
	other func() error
	ctx   context.Context
}

func (p *peer) ForwardTcp(s grpc.BidiStreamingServer[pb.TcpForwardFrame, pb.TcpForwardFrame]) error {
	f, err := s.Recv()
	if err != nil {
		return err
	}
	return p.serve(f.GetInit().GetSandboxId(), serverStream{
		recv: func() ([]byte, error) {
			f, err := s.Recv()
			return f.GetData(), err
		},
		send: func(b []byte) error {
			return s.Send(&pb.TcpForwardFrame{Payload: &pb.TcpForwardFrame_Data{Data: b}})
		},
		other: func() error {
			return s.Send(&pb.TcpForwardFrame{Payload: &pb.TcpForwardFrame_Init{Init: &pb.TcpForwardInit{SandboxId: "x"}}})
		},
		ctx: s.Context(),
	})
}

func (p *peer) RelayStream(s grpc.BidiStreamingServer[pb.RelayFrame, pb.RelayFrame]) error {
	f, err := s.Recv()
	if err != nil {
		return err
	}
	return p.serve(f.GetInit().GetChannelId(), serverStream{
		recv: func() ([]byte, error) {
			f, err := s.Recv()
			return f.GetData(), err
		},
		send: func(b []byte) error {
			return s.Send(&pb.RelayFrame{Payload: &pb.RelayFrame_Data{Data: b}})
		},
		other: func() error {
			return s.Send(&pb.RelayFrame{Payload: &pb.RelayFrame_Init{Init: &pb.RelayInit{ChannelId: "x"}}})
		},
		ctx: s.Context(),
	})
}

func (p *peer) serve(mode string, s serverStream) error {
	switch mode {
	case "echo":
		for {
			b, err := s.recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			if err := s.send(b); err != nil {
				return err
			}
		}
	case "sum":
		h := sha256.New()
		for {
			b, err := s.recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return err
			}
			h.Write(b)
			p.mu.Lock()
			p.frames = append(p.frames, len(b))
			p.mu.Unlock()
		}
		return s.send([]byte(hex.EncodeToString(h.Sum(nil))))
	case "discard":
		for {
			if _, err := s.recv(); errors.Is(err, io.EOF) {
				return s.send([]byte("ok"))
			} else if err != nil {
				return err
			}
		}
	case "stall":
		<-s.ctx.Done()
		return nil
	case "frames":
		for _, f := range []func() error{
			func() error { return s.send([]byte("abc")) },
			func() error { return s.send(nil) },
			s.other,
			func() error { return s.send(bytes.Repeat([]byte("0123456789"), 10)) },
		} {
			if err := f(); err != nil {
				return err
			}
		}
		return nil
	}
	return status.Errorf(codes.InvalidArgument, "unknown mode %q", mode)
}

func (p *peer) frameSizes() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]int(nil), p.frames...)
}

// start serves a new peer on a loopback port and returns it with a client.
func start(t *testing.T) (*peer, pb.OpenShellClient) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &peer{}
	s := grpc.NewServer()
	pb.RegisterOpenShellServer(s, p)
	go s.Serve(ln)
	cc, err := grpc.NewClient("passthrough:///"+ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cc.Close()
		s.Stop()
	})
	return p, pb.NewOpenShellClient(cc)
}

// opener opens a stream on one of the two RPCs with mode as its first frame.
type opener func(ctx context.Context, api pb.OpenShellClient, mode string) (*streamconn.Conn, error)

func openForward(ctx context.Context, api pb.OpenShellClient, mode string) (*streamconn.Conn, error) {
	ctx, cancel := context.WithCancel(ctx)
	s, err := api.ForwardTcp(ctx)
	if err == nil {
		err = s.Send(&pb.TcpForwardFrame{Payload: &pb.TcpForwardFrame_Init{Init: &pb.TcpForwardInit{SandboxId: mode}}})
	}
	if err != nil {
		cancel()
		return nil, err
	}
	return streamconn.New(ctx, streamconn.Bidi(s,
		func(b []byte) *pb.TcpForwardFrame {
			return &pb.TcpForwardFrame{Payload: &pb.TcpForwardFrame_Data{Data: b}}
		},
		(*pb.TcpForwardFrame).GetData), cancel, "test-forward"), nil
}

func openRelay(ctx context.Context, api pb.OpenShellClient, mode string) (*streamconn.Conn, error) {
	ctx, cancel := context.WithCancel(ctx)
	s, err := api.RelayStream(ctx)
	if err == nil {
		err = s.Send(&pb.RelayFrame{Payload: &pb.RelayFrame_Init{Init: &pb.RelayInit{ChannelId: mode}}})
	}
	if err != nil {
		cancel()
		return nil, err
	}
	return streamconn.New(ctx, streamconn.Bidi(s,
		func(b []byte) *pb.RelayFrame { return &pb.RelayFrame{Payload: &pb.RelayFrame_Data{Data: b}} },
		(*pb.RelayFrame).GetData), cancel, "test-relay"), nil
}

var openers = []struct {
	name string
	open opener
}{{"ForwardTcp", openForward}, {"RelayStream", openRelay}}

// noSenderLeft fails unless every Conn's sender goroutine has ended.
func noSenderLeft(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		if !strings.Contains(stacks, "streamconn.(*Conn).sender") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("a Conn's sender goroutine is still running:\n%s", stacks)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestEchoManyMegabytes(t *testing.T) {
	for _, o := range openers {
		t.Run(o.name, func(t *testing.T) {
			_, api := start(t)
			c, err := o.open(t.Context(), api, "echo")
			if err != nil {
				t.Fatal(err)
			}
			data := make([]byte, 16<<20)
			_, _ = rand.Read(data)
			werr := make(chan error, 1)
			go func() {
				// Writes of odd sizes, some larger than a frame and than the queue.
				rest := data
				for len(rest) > 0 {
					n := min(len(rest), 1+mrand.IntN(3*streamconn.Queue/2))
					if _, err := c.Write(rest[:n]); err != nil {
						werr <- err
						return
					}
					rest = rest[n:]
				}
				werr <- c.CloseWrite()
			}()
			got, err := io.ReadAll(c) // the peer ends the stream after our EOF
			if err != nil {
				t.Fatal(err)
			}
			if err := <-werr; err != nil {
				t.Fatalf("write side: %v", err)
			}
			if sha256.Sum256(got) != sha256.Sum256(data) {
				t.Fatalf("echoed %d bytes differ from the %d written", len(got), len(data))
			}
			if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Write after CloseWrite = %v, want net.ErrClosed", err)
			}
			c.Close()
			noSenderLeft(t)
		})
	}
}

func TestSmallWritesAreCoalesced(t *testing.T) {
	p, api := start(t)
	c, err := openRelay(t.Context(), api, "sum")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const writes, size = 4096, 4 << 10 // 16 MiB as SSH would write it: small packets
	h := sha256.New()
	pkt := make([]byte, size)
	for i := 0; i < writes; i++ {
		_, _ = rand.Read(pkt)
		h.Write(pkt)
		if _, err := c.Write(pkt); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	sum, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if want := hex.EncodeToString(h.Sum(nil)); string(sum) != want {
		t.Fatalf("peer received bytes with digest %s, want %s", sum, want)
	}
	frames := p.frameSizes()
	for _, n := range frames {
		if n > streamconn.Chunk {
			t.Fatalf("a frame of %d bytes exceeds Chunk (%d)", n, streamconn.Chunk)
		}
	}
	// One frame per write would be 4096; coalescing gives far fewer.
	if len(frames) > writes/4 {
		t.Fatalf("%d writes of %d bytes went out as %d frames: not coalesced", writes, size, len(frames))
	}
	t.Logf("%d writes → %d frames", writes, len(frames))
}

func TestReadReturnsFramesAcrossSmallBuffers(t *testing.T) {
	for _, o := range openers {
		t.Run(o.name, func(t *testing.T) {
			_, api := start(t)
			c, err := o.open(t.Context(), api, "frames")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var got []byte
			buf := make([]byte, 7)
			for {
				n, err := c.Read(buf)
				if n == 0 && err == nil {
					t.Fatal("Read returned 0 bytes without an error (an empty frame leaked through)")
				}
				got = append(got, buf[:n]...)
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			if want := "abc" + strings.Repeat("0123456789", 10); string(got) != want {
				t.Fatalf("read %q, want %q", got, want)
			}
		})
	}
}

func TestCloseDoesNotWaitForAStalledPeer(t *testing.T) {
	_, api := start(t)
	c, err := openForward(t.Context(), api, "stall")
	if err != nil {
		t.Fatal(err)
	}
	// More than the flow-control windows and the queue hold: the writer blocks.
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(make([]byte, 64<<20))
		werr <- err
	}()
	time.Sleep(300 * time.Millisecond)
	select {
	case err := <-werr:
		t.Fatalf("a 64 MiB write to a peer that never reads returned early: %v", err)
	default:
	}
	start := time.Now()
	c.Close()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Close took %v with a stalled peer", d)
	}
	select {
	case err := <-werr:
		if err == nil {
			t.Fatal("the blocked write succeeded after Close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the blocked write did not return after Close")
	}
	noSenderLeft(t)
}

func TestCancelledContextEndsTheConn(t *testing.T) {
	for _, o := range openers {
		t.Run(o.name, func(t *testing.T) {
			_, api := start(t)
			ctx, cancel := context.WithCancel(t.Context())
			c, err := o.open(ctx, api, "echo")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4)
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
				t.Fatalf("echo = %q, %v", buf, err)
			}
			rerr := make(chan error, 1)
			go func() {
				_, err := c.Read(buf)
				rerr <- err
			}()
			cancel()
			select {
			case err := <-rerr:
				if status.Code(err) != codes.Canceled {
					t.Fatalf("Read after cancel = %v, want a Canceled status", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Read still blocked after the context was cancelled")
			}
			// The sender stops by itself, without Close.
			noSenderLeft(t)
			if _, err := c.Write([]byte("late")); err == nil {
				t.Fatal("Write after cancel succeeded")
			}
		})
	}
}

func TestAddr(t *testing.T) {
	_, api := start(t)
	c, err := openForward(t.Context(), api, "echo")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := fmt.Sprint(c.LocalAddr(), " ", c.RemoteAddr().Network()); got != "test-forward test-forward" {
		t.Fatalf("addresses %q", got)
	}
}

// BenchmarkSSHSizedWrites sends 32 KiB writes (an SSH packet each) over a RelayStream
// on loopback: the cost of the conn plus gRPC per byte relayed.
func BenchmarkSSHSizedWrites(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	s := grpc.NewServer()
	pb.RegisterOpenShellServer(s, &peer{})
	go s.Serve(ln)
	defer s.Stop()
	cc, err := grpc.NewClient("passthrough:///"+ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	c, err := openRelay(b.Context(), pb.NewOpenShellClient(cc), "discard")
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	pkt := make([]byte, 32<<10)
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		if _, err := c.Write(pkt); err != nil {
			b.Fatal(err)
		}
	}
	if err := c.CloseWrite(); err != nil {
		b.Fatal(err)
	}
	if reply, err := io.ReadAll(c); err != nil || string(reply) != "ok" {
		b.Fatalf("peer reply %q, %v", reply, err)
	}
}
