package runner

import (
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/openshell/openshell/guest/channel/wire"
	"github.com/openshell/openshell/supervisor/bootstrap"
)

// TestServeForkAdmitsOnlyTheOldSecret: a copy's runner serves the new identity only
// to a connection that opens with the instance secret the restored guest holds; a
// connection without it (the agent, say) gets nothing; the document carries the new
// config, the host's time and entropy, and the port closes after it was taken.
func TestServeForkAdmitsOnlyTheOldSecret(t *testing.T) {
	old, _ := newInstanceSecret()
	other, _ := newInstanceSecret()
	newSecret, _ := newInstanceSecret()
	sp := &suspender{fork: &SuspendRecord{InstanceSecret: old.String(), ForkOf: "source-id"}}
	cfg := bootstrap.Config{Endpoint: "http://gw", SandboxID: "copy-id", SandboxName: "copy", Token: "tok", InstanceSecret: newSecret.String()}
	doc, _ := json.Marshal(cfg)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	box := newStatusBox(Status{State: StateBooting})
	done := make(chan struct{})
	go func() { sp.serveFork(l, doc, box, slog.New(slog.DiscardHandler)); close(done) }()

	got := takeHostDoc(t, l, old, other, done)
	if got.SandboxID != "copy-id" || got.InstanceSecret != newSecret.String() || len(got.Reidentify.Entropy) != ForkEntropyBytes ||
		time.Since(time.Unix(0, got.Reidentify.HostTimeUnixNano)).Abs() > 5*time.Second {
		t.Fatalf("document %+v", got)
	}
	if st, _ := box.get(); st.Bootstrap != 1 || st.BadPreamble != 1 {
		t.Fatalf("status %+v: want one document served and one bad preamble", st)
	}
}

// TestServeResumedGuestTheHostClock: a resumed guest asks for a new identity as a
// copy does; its runner answers with none, only the host's time (its clock stood
// still while it was suspended), to the guest's instance secret only, once.
func TestServeResumedGuestTheHostClock(t *testing.T) {
	secret, _ := newInstanceSecret()
	other, _ := newInstanceSecret()
	sp := &suspender{resume: &SuspendRecord{InstanceSecret: secret.String()}, secret: &secret}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	box := newStatusBox(Status{State: StateBooting})
	done := make(chan struct{})
	doc := []byte(`{"sandbox_id":"sb","token":"tok"}`)
	go func() { sp.serveBootstrap(l, doc, box, slog.New(slog.DiscardHandler)); close(done) }()
	got := takeHostDoc(t, l, secret, other, done)
	if got.SandboxID != "" || got.Token != "" || len(got.Reidentify.Entropy) != 0 || time.Since(time.Unix(0, got.Reidentify.HostTimeUnixNano)).Abs() > 5*time.Second {
		t.Fatalf("document %+v: want the host's time and nothing else", got)
	}
	if st, _ := box.get(); st.Bootstrap != 1 || st.BadPreamble != 1 {
		t.Fatalf("status %+v: want one document served and one bad preamble", st)
	}
}

// takeHostDoc checks that a connection opening with other gets nothing on l, takes
// the document with secret as the guest would (acknowledging it), and checks that
// the server (done) ends and the port is closed after.
func takeHostDoc(t *testing.T, l net.Listener, secret, other wire.Secret, done <-chan struct{}) bootstrap.IdentityDoc {
	t.Helper()
	dial := func(s wire.Secret) net.Conn {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(wire.AppendPreamble(nil, s)); err != nil {
			t.Fatal(err)
		}
		return c
	}
	bad := dial(other)
	bad.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, _ := io.ReadAll(bad); len(b) != 0 {
		t.Fatalf("a connection without the guest's secret got %q", b)
	}
	bad.Close()

	c := dial(secret)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var got bootstrap.IdentityDoc
	dec := json.NewDecoder(c)
	if err := dec.Decode(&got); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte(wire.BootstrapAck)); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, len(wire.BootstrapDone))
	if _, err := io.ReadFull(c, b); err != nil || string(b) != wire.BootstrapDone {
		t.Fatalf("confirmation %q, %v", b, err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the server did not end after the document was taken")
	}
	if _, err := net.DialTimeout("tcp", l.Addr().String(), time.Second); err == nil {
		t.Fatal("the bootstrap port still accepts after the document was taken")
	}
	return got
}
