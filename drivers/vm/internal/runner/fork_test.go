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

	c := dial(old)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var got bootstrap.IdentityDoc
	dec := json.NewDecoder(c)
	if err := dec.Decode(&got); err != nil {
		t.Fatal(err)
	}
	if got.SandboxID != "copy-id" || got.InstanceSecret != newSecret.String() || len(got.Reidentify.Entropy) != ForkEntropyBytes ||
		time.Since(time.Unix(0, got.Reidentify.HostTimeUnixNano)).Abs() > 5*time.Second {
		t.Fatalf("document %+v", got)
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
		t.Fatal("serveFork did not end after the document was taken")
	}
	if _, err := net.DialTimeout("tcp", l.Addr().String(), time.Second); err == nil {
		t.Fatal("the bootstrap port still accepts after the document was taken")
	}
	if st, _ := box.get(); st.Bootstrap != 1 || st.BadPreamble != 1 {
		t.Fatalf("status %+v: want one document served and one bad preamble", st)
	}
}
