package session

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/internal/instancemd"
	"github.com/openshell/openshell/internal/testkeys"
)

// fakeGateway is a small real gRPC server with the supervisor-facing RPCs.
type fakeGateway struct {
	pb.UnimplementedOpenShellServer

	mu         sync.Mutex
	hellos     []*pb.SupervisorHello
	helloTimes []time.Time
	auth       []string
	md         []metadata.MD // of every call, in order
	rejectN    int           // reject this many sessions first
	// heartbeat is the interval the fake announces and heartbeats at (0 = the real
	// gateway's 15 s); silent = it announces the interval but never heartbeats.
	heartbeat time.Duration
	silent    bool
	streams   chan grpc.BidiStreamingServer[pb.SupervisorMessage, pb.GatewayMessage]
	results   chan *pb.RelayOpenResult
	closes    chan string // channel ids of the supervisor's relay_close messages
	relays    chan relayCall
	exitFails int
	exits     []*pb.ReportMainProcessExitRequest
	logs      []*pb.SandboxLogLine
}

// lockedStream lets the fake's heartbeats and a test's messages share one stream
// (a gRPC stream allows one sender at a time).
type lockedStream struct {
	grpc.BidiStreamingServer[pb.SupervisorMessage, pb.GatewayMessage]
	mu sync.Mutex
}

func (l *lockedStream) Send(m *pb.GatewayMessage) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.BidiStreamingServer.Send(m)
}

type relayCall struct {
	id     string
	stream grpc.BidiStreamingServer[pb.RelayFrame, pb.RelayFrame]
	done   chan struct{}
}

func newFake() *fakeGateway {
	return &fakeGateway{
		streams: make(chan grpc.BidiStreamingServer[pb.SupervisorMessage, pb.GatewayMessage], 16),
		results: make(chan *pb.RelayOpenResult, 16),
		closes:  make(chan string, 16),
		relays:  make(chan relayCall, 16),
	}
}

func (g *fakeGateway) recordAuth(ctx context.Context) {
	md, _ := metadata.FromIncomingContext(ctx)
	g.mu.Lock()
	g.auth = append(g.auth, strings.Join(md.Get("authorization"), ","))
	g.md = append(g.md, md)
	g.mu.Unlock()
}

func (g *fakeGateway) ConnectSupervisor(s grpc.BidiStreamingServer[pb.SupervisorMessage, pb.GatewayMessage]) error {
	g.recordAuth(s.Context())
	m, err := s.Recv()
	if err != nil {
		return err
	}
	h := m.GetHello()
	if h == nil {
		return status.Error(codes.InvalidArgument, "first frame must be hello")
	}
	g.mu.Lock()
	g.hellos = append(g.hellos, h)
	g.helloTimes = append(g.helloTimes, time.Now())
	reject := g.rejectN > 0
	if reject {
		g.rejectN--
	}
	every, silent := g.heartbeat, g.silent
	g.mu.Unlock()
	if every <= 0 {
		every = 15 * time.Second
	}
	if reject {
		return status.Error(codes.Unavailable, "not yet")
	}
	if err := s.Send(&pb.GatewayMessage{Payload: &pb.GatewayMessage_SessionAccepted{SessionAccepted: &pb.SessionAccepted{SessionId: "s1",
		HeartbeatIntervalSecs: uint32(every / time.Second)}}}); err != nil {
		return err
	}
	// Like the real gateway: heartbeats at the interval it announced, which the
	// supervisor holds it to (three silent intervals and it reconnects).
	ls := &lockedStream{BidiStreamingServer: s}
	go func() {
		if silent {
			return
		}
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-s.Context().Done():
				return
			case <-t.C:
			}
			if ls.Send(&pb.GatewayMessage{Payload: &pb.GatewayMessage_Heartbeat{Heartbeat: &pb.GatewayHeartbeat{}}}) != nil {
				return
			}
		}
	}()
	g.streams <- ls
	for {
		m, err := s.Recv()
		if err != nil {
			return nil
		}
		if r := m.GetRelayOpenResult(); r != nil {
			g.results <- r
		}
		if rc := m.GetRelayClose(); rc != nil {
			select {
			case g.closes <- rc.GetChannelId():
			default: // tests that do not look at them
			}
		}
	}
}

func (g *fakeGateway) RelayStream(s grpc.BidiStreamingServer[pb.RelayFrame, pb.RelayFrame]) error {
	g.recordAuth(s.Context())
	f, err := s.Recv()
	if err != nil {
		return err
	}
	if f.GetInit().GetChannelId() == "" {
		return status.Error(codes.InvalidArgument, "first frame must be init")
	}
	done := make(chan struct{})
	g.relays <- relayCall{id: f.GetInit().GetChannelId(), stream: s, done: done}
	<-done
	return nil
}

func (g *fakeGateway) ReportMainProcessExit(ctx context.Context, r *pb.ReportMainProcessExitRequest) (*pb.ReportMainProcessExitResponse, error) {
	g.recordAuth(ctx)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.exitFails > 0 {
		g.exitFails--
		return nil, status.Error(codes.Unavailable, "store busy")
	}
	g.exits = append(g.exits, r)
	return &pb.ReportMainProcessExitResponse{}, nil
}

func (g *fakeGateway) PushSandboxLogs(s grpc.ClientStreamingServer[pb.PushSandboxLogsRequest, pb.PushSandboxLogsResponse]) error {
	for {
		r, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return s.SendAndClose(&pb.PushSandboxLogsResponse{})
		}
		if err != nil {
			return err
		}
		g.mu.Lock()
		g.logs = append(g.logs, r.GetLogs()...)
		g.mu.Unlock()
	}
}

// serve starts g on addr ("127.0.0.1:0" for a new port) and returns the address and
// a stop function that kills the server abruptly.
func serve(t *testing.T, g *fakeGateway, addr string, opts ...grpc.ServerOption) (string, func()) {
	t.Helper()
	var ln net.Listener
	var err error
	for i := 0; i < 50; i++ { // the port of a just-stopped server may linger briefly
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(opts...)
	pb.RegisterOpenShellServer(s, g)
	go s.Serve(ln)
	var once sync.Once
	stop := func() { once.Do(s.Stop) }
	t.Cleanup(stop)
	return ln.Addr().String(), stop
}

// echoSSH stands in for the SSH server's socket: a real Unix listener that echoes.
func echoSSH(t *testing.T) func(ctx context.Context) (net.Conn, error) {
	sock := filepath.Join(t.TempDir(), "ssh.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}
}

func startClient(t *testing.T, endpoint string, dialSSH func(context.Context) (net.Conn, error), o DialOptions) (*Client, context.CancelFunc) {
	t.Helper()
	return startClientBackoff(t, endpoint, dialSSH, o, 100*time.Millisecond, 2*time.Second)
}

func startClientBackoff(t *testing.T, endpoint string, dialSSH func(context.Context) (net.Conn, error), o DialOptions, bmin, bmax time.Duration) (*Client, context.CancelFunc) {
	t.Helper()
	o.Endpoint = endpoint
	if o.Token == nil {
		o.Token = func() (string, error) { return "tok-123", nil }
	}
	cc, err := Dial(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return runClient(t, cc, Config{SandboxID: "sb-1", InstanceID: "inst-1", DialSSH: dialSSH, HostKey: testkeys.SSHPublicKey(t),
		BackoffMin: bmin, BackoffMax: bmax})
}

// runClient runs a client of cfg over cc until the test ends or cancel is called.
func runClient(t *testing.T, cc grpc.ClientConnInterface, cfg Config) (*Client, context.CancelFunc) {
	t.Helper()
	c, err := New(cc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return c, cancel
}

// dialPlain dials the fake gateway at addr in plaintext, with a fixed token; the
// connection is closed when the test ends.
func dialPlain(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := Dial(DialOptions{Endpoint: "http://" + addr, Token: func() (string, error) { return "tok-123", nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func waitUntil(t *testing.T, d time.Duration, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestHelloAuthAndRelay(t *testing.T) {
	g := newFake()
	addr, _ := serve(t, g, "127.0.0.1:0")
	c, _ := startClient(t, "http://"+addr, echoSSH(t), DialOptions{})
	var s grpc.BidiStreamingServer[pb.SupervisorMessage, pb.GatewayMessage]
	select {
	case s = <-g.streams:
	case <-time.After(5 * time.Second):
		t.Fatal("no session")
	}
	g.mu.Lock()
	h, auth := g.hellos[0], g.auth[0]
	g.mu.Unlock()
	if h.GetSandboxId() != "sb-1" || h.GetInstanceId() != "inst-1" || auth != "Bearer tok-123" {
		t.Fatalf("hello %v auth %q", h, auth)
	}
	waitUntil(t, 2*time.Second, "Up", c.Up)

	// Relay to the SSH target (unset target = ssh): bytes flow both ways.
	if err := s.Send(&pb.GatewayMessage{Payload: &pb.GatewayMessage_RelayOpen{RelayOpen: &pb.RelayOpen{ChannelId: "ch-1"}}}); err != nil {
		t.Fatal(err)
	}
	var rc relayCall
	select {
	case rc = <-g.relays:
	case <-time.After(5 * time.Second):
		t.Fatal("no RelayStream")
	}
	if rc.id != "ch-1" {
		t.Fatalf("relay init channel %q", rc.id)
	}
	if r := <-g.results; !r.GetSuccess() || r.GetChannelId() != "ch-1" {
		t.Fatalf("relay_open_result %v", r)
	}
	big := strings.Repeat("0123456789abcdef", 4096) // 64 KiB: several 16 KiB frames
	if err := rc.stream.Send(&pb.RelayFrame{Payload: &pb.RelayFrame_Data{Data: []byte(big)}}); err != nil {
		t.Fatal(err)
	}
	var got []byte
	for len(got) < len(big) {
		f, err := rc.stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(f.GetData()) > RelayChunk {
			t.Fatalf("frame of %d bytes exceeds %d", len(f.GetData()), RelayChunk)
		}
		got = append(got, f.GetData()...)
	}
	if string(got) != big {
		t.Fatal("echoed bytes differ")
	}
	close(rc.done) // gateway ends the relay stream

	// relay_close from the gateway tears an open relay down.
	_ = s.Send(&pb.GatewayMessage{Payload: &pb.GatewayMessage_RelayOpen{RelayOpen: &pb.RelayOpen{ChannelId: "ch-close"}}})
	rc = <-g.relays
	if r := <-g.results; !r.GetSuccess() {
		t.Fatalf("relay_open_result %v", r)
	}
	_ = s.Send(&pb.GatewayMessage{Payload: &pb.GatewayMessage_RelayClose{RelayClose: &pb.RelayClose{ChannelId: "ch-close", Reason: "test"}}})
	closed := make(chan error, 1)
	go func() {
		for {
			if _, err := rc.stream.Recv(); err != nil {
				closed <- err
				return
			}
		}
	}()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("relay still open after relay_close")
	}
	close(rc.done)

	// A TCP relay to a non-loopback host is refused with a clear error.
	_ = s.Send(&pb.GatewayMessage{Payload: &pb.GatewayMessage_RelayOpen{RelayOpen: &pb.RelayOpen{ChannelId: "ch-2",
		Target: &pb.RelayOpen_Tcp{Tcp: &pb.TcpRelayTarget{Host: "192.0.2.10", Port: 80}}}}})
	if r := <-g.results; r.GetSuccess() || !strings.Contains(r.GetError(), "not loopback") {
		t.Fatalf("relay_open_result %v", r)
	}

	// A TCP relay to a loopback port works.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("from-tcp"))
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	_ = s.Send(&pb.GatewayMessage{Payload: &pb.GatewayMessage_RelayOpen{RelayOpen: &pb.RelayOpen{ChannelId: "ch-3",
		Target: &pb.RelayOpen_Tcp{Tcp: &pb.TcpRelayTarget{Host: "127.0.0.1", Port: uint32(port)}}}}})
	rc = <-g.relays
	if r := <-g.results; !r.GetSuccess() {
		t.Fatalf("tcp relay result %v", r)
	}
	var fromTCP []byte
	for {
		f, err := rc.stream.Recv()
		if err != nil {
			break // the target closed: the supervisor half-closes the stream
		}
		fromTCP = append(fromTCP, f.GetData()...)
	}
	close(rc.done)
	if string(fromTCP) != "from-tcp" {
		t.Fatalf("tcp relay got %q", fromTCP)
	}
}

func TestReconnectWithBackoffAfterGatewayRestart(t *testing.T) {
	g := newFake()
	addr, stop := serve(t, g, "127.0.0.1:0")
	c, _ := startClientBackoff(t, "http://"+addr, echoSSH(t), DialOptions{}, 50*time.Millisecond, 10*time.Second)
	waitUntil(t, 5*time.Second, "first session", func() bool { return c.Sessions() == 1 })

	// Kill the gateway; the session drops.
	stop()
	waitUntil(t, 5*time.Second, "session down", func() bool { return !c.Up() })
	time.Sleep(100 * time.Millisecond)

	// Restart on the same address; it rejects three attempts, then accepts.
	g2 := newFake()
	g2.rejectN = 3
	serve(t, g2, addr)
	waitUntil(t, 15*time.Second, "session after restart", func() bool { return c.Up() && c.Sessions() == 2 })

	g2.mu.Lock()
	times := append([]time.Time(nil), g2.helloTimes...)
	g2.mu.Unlock()
	if len(times) != 4 {
		t.Fatalf("%d hellos after restart, want 4", len(times))
	}
	// Gaps between the rejected attempts grow (50 ms·2ⁿ ± 20 %).
	var gaps []time.Duration
	for i := 1; i < len(times); i++ {
		gaps = append(gaps, times[i].Sub(times[i-1]))
	}
	for i := 1; i < len(gaps); i++ {
		if gaps[i] < gaps[i-1]*5/4 {
			t.Fatalf("backoff does not grow: gaps %v", gaps)
		}
	}
	if gaps[0] < 40*time.Millisecond {
		t.Fatalf("retried without waiting: gaps %v", gaps)
	}
}

// TestSilentGatewayIsLeft: a gateway that accepts the session and then says nothing
// for three of its heartbeat intervals is taken for gone; the supervisor reconnects.
func TestSilentGatewayIsLeft(t *testing.T) {
	g := newFake()
	g.heartbeat, g.silent = time.Second, true
	addr, _ := serve(t, g, "127.0.0.1:0")
	c, _ := startClient(t, "http://"+addr, echoSSH(t), DialOptions{})
	waitUntil(t, 20*time.Second, "a new session after the gateway went silent", func() bool { return c.Sessions() == 2 })
	g.mu.Lock()
	hellos := slices.Clone(g.helloTimes)
	g.mu.Unlock()
	if len(hellos) != 2 {
		t.Fatalf("%d hellos, want 2", len(hellos))
	}
	if d := hellos[1].Sub(hellos[0]); d < 3*time.Second {
		t.Fatalf("left the gateway %v after its hello, before three silent 1 s intervals", d)
	}
}

func TestReportExitRetriesUntilAcknowledged(t *testing.T) {
	g := newFake()
	g.exitFails = 2
	addr, _ := serve(t, g, "127.0.0.1:0")
	c, _ := startClient(t, "http://"+addr, echoSSH(t), DialOptions{})
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := c.ReportExit(ctx, 137); err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.exits) != 1 || g.exits[0].GetExitCode() != 137 || g.exits[0].GetInstanceId() != "inst-1" || g.exitFails != 0 {
		t.Fatalf("exits %v (fails left %d)", g.exits, g.exitFails)
	}
}

func TestShipperKeepsLinesAcrossOutage(t *testing.T) {
	g := newFake()
	addr, stop := serve(t, g, "127.0.0.1:0")
	stop() // gateway down from the start
	cc, err := Dial(DialOptions{Endpoint: "http://" + addr, Token: func() (string, error) { return "t", nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	sh := NewShipper(pb.NewOpenShellClient(cc), "sb-1", ShipperOptions{MaxBuffered: 5, Batch: 2, Interval: 20 * time.Millisecond})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { sh.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	for i := 0; i < 8; i++ {
		sh.Add("INFO", "main", fmt.Sprintf("line %d", i), map[string]string{"stream": "stdout"})
	}
	time.Sleep(200 * time.Millisecond)
	if p := sh.Pending(); p != 6 { // 5 lines + the notice of the 3 dropped
		t.Fatalf("pending = %d, want the bounded 5 plus a drop notice", p)
	}
	g2 := newFake()
	serve(t, g2, addr)
	waitUntil(t, 10*time.Second, "lines delivered", func() bool { return sh.Pending() == 0 })
	g2.mu.Lock()
	defer g2.mu.Unlock()
	var msgs []string
	for _, l := range g2.logs {
		if l.GetSource() != "sandbox" || l.GetSandboxId() != "sb-1" {
			t.Fatalf("bad line %v", l)
		}
		msgs = append(msgs, l.GetMessage())
	}
	want := "3 log lines dropped while the gateway was unreachable|line 3|line 4|line 5|line 6|line 7"
	if strings.Join(msgs, "|") != want {
		t.Fatalf("delivered %q, want %q", strings.Join(msgs, "|"), want)
	}
}

// TestShipperDropNoticeSurvivesFailedFlush: a flush that fails while lines are
// being dropped leaves the drop count whole and the buffer bounded. (The notice used
// to be put in the buffer, where the next Add dropped it as if it were one line: the
// count shrank and the buffer held max lines plus a new notice.)
func TestShipperDropNoticeSurvivesFailedFlush(t *testing.T) {
	g := newFake()
	addr, stop := serve(t, g, "127.0.0.1:0")
	stop() // gateway down
	cc, err := Dial(DialOptions{Endpoint: "http://" + addr, Token: func() (string, error) { return "t", nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	sh := NewShipper(pb.NewOpenShellClient(cc), "sb-1", ShipperOptions{MaxBuffered: 5, Batch: 10})
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	for i := 0; i < 7; i++ { // lines 0 and 1 dropped
		sh.Add("INFO", "main", fmt.Sprintf("line %d", i), nil)
	}
	if err := sh.Flush(ctx); err == nil {
		t.Fatal("flush to a stopped gateway succeeded")
	}
	sh.Add("INFO", "main", "line 7", nil) // line 2 dropped
	if err := sh.Flush(ctx); err == nil {
		t.Fatal("flush to a stopped gateway succeeded")
	}
	if p := sh.Pending(); p != 6 {
		t.Fatalf("pending = %d, want the bounded 5 plus a drop notice", p)
	}
	g2 := newFake()
	serve(t, g2, addr)
	// The connection redials on its own backoff; flush once it is back.
	for s := cc.GetState(); s != connectivity.Ready; s = cc.GetState() {
		cc.Connect()
		if !cc.WaitForStateChange(ctx, s) {
			t.Fatal("no connection to the restarted gateway")
		}
	}
	if err := sh.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if p := sh.Pending(); p != 0 {
		t.Fatalf("pending = %d after a flush the gateway acknowledged", p)
	}
	g2.mu.Lock()
	defer g2.mu.Unlock()
	var msgs []string
	for _, l := range g2.logs {
		msgs = append(msgs, l.GetMessage())
	}
	want := "3 log lines dropped while the gateway was unreachable|line 3|line 4|line 5|line 6|line 7"
	if strings.Join(msgs, "|") != want {
		t.Fatalf("delivered %q, want %q", strings.Join(msgs, "|"), want)
	}
}

func TestTLSServerNameAndCA(t *testing.T) {
	caPEM, cert := testPKI(t, "localhost")
	g := newFake()
	addr, _ := serve(t, g, "127.0.0.1:0", grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}})))
	_, port, _ := net.SplitHostPort(addr)
	c, _ := startClient(t, "https://localhost:"+port, echoSSH(t), DialOptions{CAPEM: caPEM})
	waitUntil(t, 5*time.Second, "TLS session", c.Up)

	// A client trusting a different CA never gets a session.
	otherCA, _ := testPKI(t, "localhost")
	c2, _ := startClient(t, "https://localhost:"+port, echoSSH(t), DialOptions{CAPEM: otherCA})
	time.Sleep(500 * time.Millisecond)
	if c2.Sessions() != 0 {
		t.Fatal("session established with an untrusted certificate")
	}
}

func testPKI(t *testing.T, host string) ([]byte, tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestParseEndpoint(t *testing.T) {
	for in, want := range map[string]Endpoint{
		"https://gw.example:17670": {Host: "gw.example", Addr: "gw.example:17670", Secure: true},
		"http://127.0.0.1:9":       {Host: "127.0.0.1", Addr: "127.0.0.1:9"},
		"gw:1":                     {Host: "gw", Addr: "gw:1", Secure: true},
		"https://[::1]":            {Host: "::1", Addr: "[::1]:17670", Secure: true},
	} {
		got, err := ParseEndpoint(in)
		if err != nil || got != want {
			t.Errorf("ParseEndpoint(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "ftp://x:1", "https://:80"} {
		if _, err := ParseEndpoint(bad); err == nil {
			t.Errorf("ParseEndpoint(%q) accepted", bad)
		}
	}
}

func FuzzParseEndpoint(f *testing.F) {
	for _, s := range []string{"https://gw:1", "http://[::1]:80", "x", "://", "https://a:b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ep, err := ParseEndpoint(s)
		if err == nil {
			if ep.Host == "" {
				t.Fatalf("ParseEndpoint(%q) gave an empty host", s)
			}
			if _, _, err := net.SplitHostPort(ep.Addr); err != nil {
				t.Fatalf("ParseEndpoint(%q).Addr = %q: %v", s, ep.Addr, err)
			}
		}
	})
}

func TestBackoffBounds(t *testing.T) {
	for n := 0; n < 40; n++ {
		d := Backoff(n, time.Second, 30*time.Second)
		if d < 800*time.Millisecond || d > 36*time.Second {
			t.Fatalf("Backoff(%d) = %v", n, d)
		}
	}
}

func TestRestartedGatewayIsSeenBeforeLongBackoff(t *testing.T) {
	g := newFake()
	addr, stop := serve(t, g, "127.0.0.1:0")
	// A long session backoff: attempts at ≈0, 2, 6 and 14 s of the outage, so without
	// the transport wake-up the session would return ≈7 s after the restart.
	c, _ := startClientBackoff(t, "http://"+addr, echoSSH(t), DialOptions{}, 2*time.Second, 30*time.Second)
	waitUntil(t, 5*time.Second, "first session", c.Up)
	stop()
	time.Sleep(7 * time.Second)
	serve(t, newFake(), addr)
	restarted := time.Now()
	waitUntil(t, 15*time.Second, "session after restart", func() bool { return c.Sessions() == 2 })
	if d := time.Since(restarted); d > 5*time.Second {
		t.Fatalf("session back %v after the gateway restarted", d)
	}
}

// TestIdentityMetadata: the hello carries the instance secret and the SSH host key as
// call metadata (the messages stay upstream's), RelayStream and the exit report carry
// the same instance id and secret, and a reconnect presents the same secret again.
func TestIdentityMetadata(t *testing.T) {
	g := newFake()
	addr, stop := serve(t, g, "127.0.0.1:0")
	c, _ := startClientBackoff(t, "http://"+addr, echoSSH(t), DialOptions{}, 50*time.Millisecond, 200*time.Millisecond)
	var s grpc.BidiStreamingServer[pb.SupervisorMessage, pb.GatewayMessage]
	select {
	case s = <-g.streams:
	case <-time.After(5 * time.Second):
		t.Fatal("no session")
	}
	if err := s.Send(&pb.GatewayMessage{Payload: &pb.GatewayMessage_RelayOpen{RelayOpen: &pb.RelayOpen{ChannelId: "ch-1"}}}); err != nil {
		t.Fatal(err)
	}
	rc := <-g.relays
	close(rc.done)
	if err := c.ReportExit(t.Context(), 3); err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	md := slices.Clone(g.md)
	g.mu.Unlock()
	if len(md) < 3 {
		t.Fatalf("%d calls recorded, want hello, relay, exit", len(md))
	}
	secret := md[0].Get(instancemd.InstanceSecret)
	if len(secret) != 1 || len(secret[0]) != 64 {
		t.Fatalf("hello instance secret = %q, want one 64-hex value", secret)
	}
	if id := md[0].Get(instancemd.InstanceID); len(id) != 1 || id[0] != "inst-1" {
		t.Errorf("hello instance id metadata = %q", id)
	}
	raw, err := base64.StdEncoding.DecodeString(strings.Join(md[0].Get(instancemd.HostKey), ""))
	if err != nil {
		t.Fatal(err)
	}
	if key, err := ssh.ParsePublicKey(raw); err != nil || !bytes.Equal(key.Marshal(), c.cfg.HostKey.Marshal()) {
		t.Errorf("registered host key = %v (%v), want the configured one", key, err)
	}
	for i, name := range []string{"RelayStream", "ReportMainProcessExit"} {
		m := md[i+1]
		if got := m.Get(instancemd.InstanceSecret); len(got) != 1 || got[0] != secret[0] {
			t.Errorf("%s instance secret = %q, want the hello's", name, got)
		}
		if got := m.Get(instancemd.InstanceID); len(got) != 1 || got[0] != "inst-1" {
			t.Errorf("%s instance id = %q", name, got)
		}
		if len(m.Get(instancemd.HostKey)) != 0 {
			t.Errorf("%s carries the host key; only the hello registers it", name)
		}
	}

	// The gateway goes away and comes back: the reconnect presents the same secret.
	stop()
	waitUntil(t, 5*time.Second, "session down", func() bool { return !c.Up() })
	g2 := newFake()
	serve(t, g2, addr)
	select {
	case <-g2.streams:
	case <-time.After(10 * time.Second):
		t.Fatal("no reconnect")
	}
	g2.mu.Lock()
	again := g2.md[0].Get(instancemd.InstanceSecret)
	g2.mu.Unlock()
	if len(again) != 1 || again[0] != secret[0] {
		t.Errorf("reconnect secret %q, want %q", again, secret[0])
	}
}

// TestShipperLastFlush: a shipper whose context ends makes one last push of what it
// holds, unless the context ended with ErrNoLastFlush (a restored guest's old
// identity, whose lines nobody takes): then it returns at once and pushes nothing.
func TestShipperLastFlush(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cause error
		want  int // lines the gateway got
	}{
		{"plain end", nil, 1},
		{"no last flush", ErrNoLastFlush, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newFake()
			addr, _ := serve(t, g, "127.0.0.1:0")
			cc, err := Dial(DialOptions{Endpoint: "http://" + addr, Token: func() (string, error) { return "t", nil }})
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			// Lines wait for an hour between pushes: only the last flush can send one.
			sh := NewShipper(pb.NewOpenShellClient(cc), "sb-1", ShipperOptions{Interval: time.Hour})
			ctx, cancel := context.WithCancelCause(t.Context())
			done := make(chan struct{})
			go func() { sh.Run(ctx); close(done) }()
			time.Sleep(100 * time.Millisecond) // Run's first (empty) push is done
			sh.Add("INFO", "main", "the last line", nil)
			cancel(tc.cause)
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("Run did not return after its context ended")
			}
			g.mu.Lock()
			got := len(g.logs)
			g.mu.Unlock()
			if got != tc.want || sh.Pending() != 1-tc.want {
				t.Fatalf("the gateway got %d lines, %d pending; want %d got", got, sh.Pending(), tc.want)
			}
		})
	}
}

// TestHostReturnRedialsAtOnce: a VM restored after its host end was gone (here: the
// gateway stopped and the dialer failing) has a gRPC connection deep in its redial
// backoff; a host return makes it redial at once, so the session is back well before
// that backoff (and the session's own, 20 s here) would have let it.
func TestHostReturnRedialsAtOnce(t *testing.T) {
	g := newFake()
	addr, stop := serve(t, g, "127.0.0.1:0")
	var hostGone atomic.Bool
	var d net.Dialer
	cc, err := Dial(DialOptions{Endpoint: "http://" + addr, Token: func() (string, error) { return "tok-123", nil },
		Dial: func(ctx context.Context, addr string) (net.Conn, error) {
			if hostGone.Load() {
				return nil, errors.New("host end gone")
			}
			return d.DialContext(ctx, "tcp", addr)
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	returns := make(chan struct{}, 1)
	c, _ := runClient(t, cc, Config{SandboxID: "sb-1", InstanceID: "inst-1", DialSSH: echoSSH(t), HostKey: testkeys.SSHPublicKey(t),
		BackoffMin: 20 * time.Second, BackoffMax: 20 * time.Second, HostReturns: returns})
	waitUntil(t, 10*time.Second, "first session", func() bool { return c.Up() && c.Sessions() == 1 })

	hostGone.Store(true)
	stop()
	waitUntil(t, 10*time.Second, "session down", func() bool { return !c.Up() })
	// Redials at ~1 s, ~2.6 s and ~5.2 s fail: the next is due ~4 s later.
	time.Sleep(6 * time.Second)
	_, stop = serve(t, g, addr)
	hostGone.Store(false)
	t0 := time.Now()
	returns <- struct{}{}
	waitUntil(t, 10*time.Second, "session after the host return", func() bool { return c.Up() && c.Sessions() == 2 })
	if took := time.Since(t0); took > 1200*time.Millisecond {
		t.Fatalf("session back %v after the host return; want a redial at once", took)
	} else {
		t.Logf("session back %v after the host return", took)
	}

	// The host is back a moment before its transport can be dialed: the first redial
	// fails. The session is retried once the transport is up (its own next redial,
	// ~1 s), not at once into that failure and then after its 20 s backoff.
	hostGone.Store(true)
	stop()
	waitUntil(t, 10*time.Second, "session down again", func() bool { return !c.Up() })
	time.Sleep(2 * time.Second)
	serve(t, g, addr)
	t0 = time.Now()
	returns <- struct{}{}
	time.Sleep(100 * time.Millisecond)
	hostGone.Store(false)
	waitUntil(t, 10*time.Second, "session after a host return ahead of its transport", func() bool { return c.Up() && c.Sessions() == 3 })
	if took := time.Since(t0); took > 3*time.Second {
		t.Fatalf("session back %v after a host return ahead of its transport; want it at the transport's next redial", took)
	} else {
		t.Logf("session back %v after a host return ahead of its transport", took)
	}
}

// TestTransportBackBeforeTheWait: the session fails while its connection is down, and
// the connection is back before the wait starts (a gateway restarted in that
// instant). The session is retried at once, not after its backoff (20 s here). A
// gateway that then refuses the session, on a connection that stays up, is retried
// only after the backoff.
func TestTransportBackBeforeTheWait(t *testing.T) {
	g := newFake()
	addr, stop := serve(t, g, "127.0.0.1:0")
	cc := dialPlain(t, addr)
	c, err := New(cc, Config{SandboxID: "sb-1", InstanceID: "inst-1", DialSSH: echoSSH(t), HostKey: testkeys.SSHPublicKey(t),
		BackoffMin: 20 * time.Second, BackoffMax: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var (
		restart atomic.Bool
		backAt  atomic.Int64
		stops   = make(chan func(), 2)
	)
	// Between the failed session and its wait: the gateway is back, and so is the
	// client's connection to it.
	c.beforeSleep = func() {
		if !restart.Swap(false) {
			return
		}
		_, stop := serve(t, g, addr)
		stops <- stop
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for s := cc.GetState(); s != connectivity.Ready; s = cc.GetState() {
			if s == connectivity.Idle {
				cc.Connect()
			}
			if !cc.WaitForStateChange(ctx, s) {
				t.Errorf("the connection did not come back: %v", cc.GetState())
				return
			}
		}
		backAt.Store(time.Now().UnixNano())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	waitUntil(t, 10*time.Second, "first session", func() bool { return c.Up() && c.Sessions() == 1 })

	restart.Store(true)
	stop()
	waitUntil(t, 15*time.Second, "session after the connection came back", func() bool { return c.Sessions() == 2 && c.Up() })
	if took := time.Since(time.Unix(0, backAt.Load())); took > 2*time.Second {
		t.Fatalf("session back %v after its connection was; want a retry at once", took)
	} else {
		t.Logf("session back %v after its connection was", took)
	}

	hellos := func() int {
		g.mu.Lock()
		defer g.mu.Unlock()
		return len(g.helloTimes)
	}
	g.mu.Lock()
	g.rejectN = 1
	g.mu.Unlock()
	n := hellos()
	restart.Store(true)
	(<-stops)()
	waitUntil(t, 15*time.Second, "the refused session", func() bool { return hellos() == n+1 })
	time.Sleep(1500 * time.Millisecond)
	if got := hellos(); got != n+1 || c.Up() {
		t.Fatalf("%d sessions tried after a refusal on a connection that stayed up (up %v); want none before the backoff", got-n-1, c.Up())
	}
}
