package runner

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openshell/openshell/guest/channel/wire"
	"github.com/openshell/openshell/internal/netguard"
	"github.com/openshell/openshell/supervisor/bootstrap"
)

// logBuf collects log lines for assertions.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

func (l *logBuf) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

func unixListener(t *testing.T) (net.Listener, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "p.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, sock
}

func shortTimeouts(t *testing.T, d time.Duration) {
	t.Helper()
	ob, op := bootstrapTimeout, preambleTimeout
	bootstrapTimeout, preambleTimeout = d, d
	t.Cleanup(func() { bootstrapTimeout, preambleTimeout = ob, op })
}

// TestBootstrapServedOnce: attempts that stop halfway or never acknowledge do not
// count and the document is served again; the first acknowledged fetch closes the
// port (the next dial is refused) after telling the guest so, with the host's clock; the status says one
// document served and how many attempts were not completed.
func TestBootstrapServedOnce(t *testing.T) {
	shortTimeouts(t, 500*time.Millisecond)
	l, sock := unixListener(t)
	doc, _ := json.Marshal(bootstrap.Config{Endpoint: "http://gw:1", SandboxID: "sb", Token: "tok", InstanceSecret: strings.Repeat("ab", 32)})
	doc = append(doc, bytes.Repeat([]byte(" "), 256<<10)...) // large enough not to fit one socket buffer
	want := bytes.Clone(doc)
	box := newStatusBox(Status{State: StateBooting})
	var logs logBuf
	done := make(chan struct{})
	go func() { serveBootstrapOnce(l, doc, box, logs.logger()); close(done) }()

	dial := func() net.Conn {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatalf("dial the bootstrap port: %v", err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return c
	}
	// 1: read a few bytes and hang up mid-transfer.
	c := dial()
	if _, err := io.ReadFull(c, make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	// 2: read it all but never acknowledge.
	c = dial()
	if _, err := io.ReadFull(c, make([]byte, len(want))); err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond)
	c.Close()
	// 3: a wrong acknowledgement.
	c = dial()
	io.ReadFull(c, make([]byte, len(want)))
	io.WriteString(c, "OSB1-NAK")
	c.Close()
	// 4: the supervisor: the whole document, acknowledged, then the confirmation.
	c = dial()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("fourth fetch: %v (equal=%v)", err, bytes.Equal(got, want))
	}
	before := time.Now()
	if _, err := io.WriteString(c, wire.BootstrapAck); err != nil {
		t.Fatal(err)
	}
	end, err := io.ReadAll(c)
	if err != nil || len(end) != len(wire.BootstrapDone)+wire.HostClockLen || string(end[:len(wire.BootstrapDone)]) != wire.BootstrapDone {
		t.Fatalf("after the acknowledgement: %q, %v; want %q, the host's clock, then EOF", end, err, wire.BootstrapDone)
	}
	if clock, ok := wire.ParseHostClock([wire.HostClockLen]byte(end[len(wire.BootstrapDone):])); !ok || clock.Before(before) || clock.After(time.Now()) {
		t.Errorf("the host's clock after the confirmation reads %v (%v), want a time between the acknowledgement and now", clock, ok)
	}
	c.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("serveBootstrapOnce still runs after an acknowledged fetch")
	}
	if c, err := net.Dial("unix", sock); err == nil {
		b, _ := io.ReadAll(c)
		c.Close()
		t.Fatalf("the bootstrap port still answers after the served fetch (%d bytes)", len(b))
	}
	st, _ := box.get()
	if st.Bootstrap != 1 || st.BootstrapUnacked != 3 || st.State != StateRunning || st.BootedAt.IsZero() {
		t.Fatalf("status %+v: want 1 served, 3 unacknowledged, running", st)
	}
	if !bytes.Equal(doc, make([]byte, len(doc))) {
		t.Error("the served document is still in the runner's memory")
	}
	if n := logs.count("bootstrap port is closed"); n != 1 {
		t.Errorf("%d 'port is closed' log lines, want 1", n)
	}
}

// TestGatePreamble: only a connection that starts with this boot's preamble is
// admitted, and the bytes after it arrive intact; silence, garbage, a short preamble
// and a wrong secret are closed without a byte, counted and logged (rate-limited).
func TestGatePreamble(t *testing.T) {
	shortTimeouts(t, 300*time.Millisecond)
	secret, err := newInstanceSecret()
	if err != nil {
		t.Fatal(err)
	}
	wrong := secret
	wrong[31] ^= 1
	l, sock := unixListener(t)
	box := newStatusBox(Status{})
	var logs logBuf
	g := &gate{port: "egress", limit: 8, secret: secret, box: box, log: logs.logger(),
		refused: func(s *Status) { s.EgressRefused++ }}
	gl := g.listen(l)
	defer gl.Close()
	admitted := make(chan net.Conn, 8)
	go func() {
		for {
			c, err := gl.Accept()
			if err != nil {
				close(admitted)
				return
			}
			admitted <- c
		}
	}()
	bad := map[string][]byte{
		"silent":       nil,
		"garbage":      []byte("GET /v1/resolve?name=example.com HTTP/1.1\r\n\r\n"),
		"short":        wire.AppendPreamble(nil, secret)[:wire.PreambleLen-1],
		"wrong secret": append(wire.AppendPreamble(nil, wrong), "CONNECT 1.1.1.1:443 HTTP/1.1\r\n\r\n"...),
		"hex secret":   append([]byte("OSI1"), secret.String()[:32]...),
	}
	for name, b := range bad {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(b)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(make([]byte, 1))
		c.Close()
		if n != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("%s: read %d bytes, %v; want the runner to close the connection", name, n, err)
		}
	}
	select {
	case c := <-admitted:
		t.Fatalf("a connection without the right preamble was admitted: %v", c)
	default:
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(append(wire.AppendPreamble(nil, secret), "hello"...))
	var ac net.Conn
	select {
	case ac = <-admitted:
	case <-time.After(5 * time.Second):
		t.Fatal("the connection with the right preamble was not admitted")
	}
	ac.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 5)
	if _, err := io.ReadFull(ac, b); err != nil || string(b) != "hello" {
		t.Fatalf("after the preamble: %q, %v", b, err)
	}
	ac.Close()
	st, _ := box.get()
	if st.BadPreamble != len(bad) {
		t.Errorf("bad_preamble = %d, want %d", st.BadPreamble, len(bad))
	}
	if n := logs.count("without this boot's instance preamble"); n != 1 {
		t.Errorf("%d log lines for %d refusals within %v, want 1", n, len(bad), refusalLogEvery)
	}
	for i := 0; g.open.Load() != 0 && i < 100; i++ {
		time.Sleep(20 * time.Millisecond) // the gate frees a slot right after its close
	}
	if g.open.Load() != 0 {
		t.Errorf("%d slots still held after every connection closed", g.open.Load())
	}
}

// TestGateLimit: with the limit held, further connections are closed at once,
// counted, and logged once for the burst; a freed slot admits the next one.
func TestGateLimit(t *testing.T) {
	secret, _ := newInstanceSecret()
	l, sock := unixListener(t)
	box := newStatusBox(Status{})
	var logs logBuf
	const limit, extra = 5, 20
	g := &gate{port: "gateway", limit: limit, secret: secret, box: box, log: logs.logger(),
		refused: func(s *Status) { s.GatewayRefused++ }, linger: 20 * time.Millisecond}
	gl := g.listen(l)
	defer gl.Close()
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(wire.AppendPreamble(nil, secret))
		return c
	}
	for range limit {
		held = append(held, dial())
		ac, err := gl.Accept()
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, ac)
	}
	for i := range extra {
		c := dial()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(make([]byte, 1))
		c.Close()
		// A clean end, not a reset: the vsock backend does not pass a reset on, and
		// the guest's end of the refused stream would stay open.
		if n != 0 || !errors.Is(err, io.EOF) {
			t.Fatalf("connection %d over the limit: read %d, %v; want it ended (EOF)", limit+i+1, n, err)
		}
	}
	st, _ := box.get()
	if st.GatewayRefused != extra {
		t.Errorf("gateway_refused = %d, want %d", st.GatewayRefused, extra)
	}
	if n := logs.count("too many open streams on the gateway port"); n != 1 {
		t.Errorf("%d log lines for a burst of %d refusals, want 1", n, extra)
	}
	if !strings.Contains(logs.b.String(), "limit=5") {
		t.Errorf("the log line does not name the limit: %s", logs.b.String())
	}
	// Free one slot (the admitted end of the first stream): the next one gets in.
	held[1].Close()
	c := dial()
	held = append(held, c)
	acc := make(chan net.Conn, 1)
	go func() {
		ac, err := gl.Accept()
		if err != nil {
			t.Error(err)
		}
		acc <- ac
	}()
	select {
	case ac := <-acc:
		if ac != nil {
			held = append(held, ac)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a freed slot did not admit the next connection")
	}
	if got := g.open.Load(); got != limit {
		t.Errorf("%d slots held, want %d", got, limit)
	}
}

func TestRefusalLog(t *testing.T) {
	var r refusalLog
	t0 := time.Now()
	if ok, n := r.note(t0); !ok || n != 1 {
		t.Fatalf("first refusal: %v %d", ok, n)
	}
	for i := range 100 {
		if ok, _ := r.note(t0.Add(time.Duration(i) * time.Millisecond)); ok {
			t.Fatal("logged again within the interval")
		}
	}
	if ok, n := r.note(t0.Add(refusalLogEvery)); !ok || n != 101 {
		t.Fatalf("after the interval: %v %d; want a line counting 101", ok, n)
	}
}

func TestLimitsSpec(t *testing.T) {
	if got := (Limits{}).WithDefaults(); got.GatewayStreams != 64 || got.EgressStreams != 256 {
		t.Errorf("defaults %+v", got)
	}
	if got := (Limits{GatewayStreams: 2}).WithDefaults(); got.GatewayStreams != 2 || got.EgressStreams != 256 {
		t.Errorf("a set value was replaced: %+v", got)
	}
	s := &Spec{SandboxID: "sb-1", Machine: MachineSpec{VCPUs: 1, MemoryMiB: 256, Kernel: "k", Initrd: "i", ImageDisk: "a", Disk: "b"}, GatewayAddr: "127.0.0.1:1"}
	s.Limits.EgressStreams = -1
	if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "limits.egress_streams") {
		t.Errorf("Validate(egress_streams=-1) = %v", err)
	}
}

// TestEgressPolicyUsesSharedList: the runner's static guard refuses every range of
// the shared list (the supervisor's SSRF guard uses the same one), NAT64 and 6to4 of
// an internal address included, unless the operator allows it.
func TestEgressPolicyUsesSharedList(t *testing.T) {
	var deny EgressPolicy
	for _, r := range netguard.Ranges() {
		a := r.Prefix.Masked().Addr().Next()
		if deny.Check(a) == nil {
			t.Errorf("%s (%s, %s) allowed", a, r.Prefix, r.Name)
		}
	}
	for _, s := range []string{"64:ff9b::a9fe:a9fe", "64:ff9b:1::1", "2002:a00:1::1", "2001::1", "198.18.0.1", "192.0.2.1", "::ffff:10.0.0.1"} {
		err := deny.Check(netip.MustParseAddr(s))
		if err == nil || !errors.Is(err, errRefused) {
			t.Errorf("%s: %v; want refused", s, err)
		}
	}
	if err := deny.Check(netip.MustParseAddr("64:ff9b::a9fe:a9fe")); err == nil || !strings.Contains(err.Error(), "NAT64") {
		t.Errorf("the refusal does not name the range: %v", err)
	}
	for _, s := range []string{"8.8.8.8", "2606:4700::1111", "2002:808:808::1"} {
		if err := deny.Check(netip.MustParseAddr(s)); err != nil {
			t.Errorf("%s refused: %v", s, err)
		}
	}
	if (EgressPolicy{AllowCIDRs: []string{"64:ff9b::/96"}}).Check(netip.MustParseAddr("64:ff9b::808:808")) != nil {
		t.Error("allow_cidrs does not lift the NAT64 range")
	}
}

// FuzzPreamble: whatever a guest sends first, the check admits it only when it is
// exactly the magic and this boot's secret, and never reads past the preamble.
func FuzzPreamble(f *testing.F) {
	secret := wire.Secret{1, 2, 3}
	f.Add(wire.AppendPreamble(nil, secret))
	f.Add(append(wire.AppendPreamble(nil, secret), "CONNECT 1.1.1.1:443 HTTP/1.1\r\n\r\n"...))
	f.Add(wire.AppendPreamble(nil, wire.Secret{}))
	f.Add([]byte("OSI1"))
	f.Add([]byte("GET /v1/resolve?name=x HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		err := wire.CheckPreamble(r, secret)
		good := len(b) >= wire.PreambleLen && bytes.Equal(b[:wire.PreambleLen], wire.AppendPreamble(nil, secret))
		if (err == nil) != good {
			t.Fatalf("CheckPreamble(%q) = %v, want admitted=%v", b, err, good)
		}
		if consumed := len(b) - r.Len(); consumed > wire.PreambleLen {
			t.Fatalf("read %d bytes, past the preamble", consumed)
		}
	})
}

// FuzzBootstrapAck: whatever a guest answers after the document, the bootstrap is
// counted served only for the exact acknowledgement.
func FuzzBootstrapAck(f *testing.F) {
	f.Add([]byte(wire.BootstrapAck))
	f.Add([]byte(wire.BootstrapAck + "extra"))
	f.Add([]byte("OSB1-AC"))
	f.Add([]byte{})
	if ack, err := wire.AppendTimelineAck(nil, wire.GuestTimeline{NowNs: 9e8, Steps: []wire.GuestStep{{Phase: "kernel", Ns: 5e8}}}); err == nil {
		f.Add(ack)
		f.Add(ack[:len(ack)-2])
	}
	f.Add([]byte(wire.BootstrapAckTimeline + "\xff\xff{}"))
	f.Fuzz(func(t *testing.T, ans []byte) {
		a, b := net.Pipe()
		go func() {
			io.ReadFull(b, make([]byte, 3))
			b.Write(ans)
			b.Close()
		}()
		_, err := sendBootstrap(a, []byte("doc"))
		a.Close()
		good := bytes.HasPrefix(ans, []byte(wire.BootstrapAck))
		if bytes.HasPrefix(ans, []byte(wire.BootstrapAckTimeline)) {
			_, terr := wire.ReadTimeline(bytes.NewReader(ans[len(wire.BootstrapAckTimeline):]))
			good = terr == nil
		}
		if (err == nil) != good {
			t.Fatalf("answer %q: err=%v, want served=%v", ans, err, good)
		}
	})
}
