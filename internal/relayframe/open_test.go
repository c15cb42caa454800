package relayframe

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// A bulk stream's open frame and the host's answer travel in both directions over
// one stream; what follows them stays unread for the relay.
func TestBulkOpenRoundTrip(t *testing.T) {
	o := Open{ChannelID: "ch-1", InstanceID: "inst-1", InstanceSecret: "s3cret"}
	var b bytes.Buffer
	if err := WriteOpen(&b, o); err != nil {
		t.Fatal(err)
	}
	b.WriteString("relay bytes")
	got, err := ReadOpen(&b)
	if err != nil {
		t.Fatalf("ReadOpen: %v", err)
	}
	if got != o {
		t.Fatalf("ReadOpen = %+v, want %+v", got, o)
	}
	if rest, _ := io.ReadAll(&b); string(rest) != "relay bytes" {
		t.Fatalf("after the open frame: %q; ReadOpen must read exactly the frame", rest)
	}

	b.Reset()
	if err := WriteOpenReply(&b, nil); err != nil {
		t.Fatal(err)
	}
	b.WriteString("x")
	if err := ReadOpenReply(&b); err != nil {
		t.Fatalf("ok reply: %v", err)
	}
	if b.String() != "x" {
		t.Fatalf("after the reply: %q", b.String())
	}
	b.Reset()
	if err := WriteOpenReply(&b, errors.New("no gateway socket")); err != nil {
		t.Fatal(err)
	}
	if err := ReadOpenReply(&b); !errors.Is(err, ErrBulkRefused) || !strings.Contains(err.Error(), "no gateway socket") {
		t.Fatalf("refusal: %v; want ErrBulkRefused with the reason", err)
	}
}

// What a guest may send the runner as an open frame: each bad one is refused with
// the field or the rule named.
func TestBulkOpenHostile(t *testing.T) {
	for _, c := range []struct {
		name string
		in   []byte
		want string
	}{
		{"empty stream", nil, "EOF"},
		{"another kind first", frame('d', "{}"), "starts with an open frame"},
		{"over the limit", AppendHeader(nil, BulkOpen, maxBulkOpen+1), "over the size limit"},
		{"cut short", frame(BulkOpen, `{"channel_id":"a"}`)[:10], "unexpected EOF"},
		{"not JSON", frame(BulkOpen, "hello"), "invalid character"},
		{"no channel", frame(BulkOpen, `{"instance_id":"i"}`), "channel_id is empty"},
		{"no instance", frame(BulkOpen, `{"channel_id":"c"}`), "instance_id is empty"},
		{"unknown field", frame(BulkOpen, `{"channel_id":"c","instance_id":"i","token":"t"}`), "unknown field"},
		{"two objects", frame(BulkOpen, `{"channel_id":"c","instance_id":"i"}{}`), "one object"},
		{"header smuggling", frame(BulkOpen, `{"channel_id":"c\r\nx: y","instance_id":"i"}`), "channel_id has byte 0xd"},
		{"non-ASCII secret", frame(BulkOpen, `{"channel_id":"c","instance_id":"i","instance_secret":"é"}`), "instance_secret has byte"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ReadOpen(bytes.NewReader(c.in))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("ReadOpen = %v, want an error containing %q", err, c.want)
			}
		})
	}
	for _, c := range []struct {
		name string
		in   []byte
		want string
	}{
		{"nothing", nil, "EOF"},
		{"ok with bytes", AppendHeader(nil, BulkOK, 3), "must be empty"},
		{"huge refusal", AppendHeader(nil, BulkRefused, maxBulkRefused+1), "over the size limit"},
		{"other kind", AppendHeader(nil, 'd', 0), "unexpected frame kind"},
	} {
		t.Run("reply "+c.name, func(t *testing.T) {
			if err := ReadOpenReply(bytes.NewReader(c.in)); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("ReadOpenReply = %v, want an error containing %q", err, c.want)
			}
		})
	}
}

// FuzzReadOpen: the runner reads a guest's open frame; whatever the guest sends, it
// gets a checked Open or an error, never a panic, and never reads past the frame.
func FuzzReadOpen(f *testing.F) {
	var b bytes.Buffer
	_ = WriteOpen(&b, Open{ChannelID: "c", InstanceID: "i", InstanceSecret: "s"})
	f.Add(b.Bytes())
	f.Add(append(AppendHeader(nil, BulkOpen, 2), "{}"...))
	f.Add(AppendHeader(nil, BulkOpen, 1<<31))
	f.Add([]byte("o\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		o, err := ReadOpen(r)
		if err != nil {
			return
		}
		if o.Check() != nil {
			t.Fatalf("ReadOpen returned an unchecked open %+v", o)
		}
		if used := len(in) - r.Len(); used > HeaderLen+maxBulkOpen {
			t.Fatalf("read %d bytes, more than one open frame", used)
		}
		var again bytes.Buffer
		if err := WriteOpen(&again, o); err != nil {
			t.Fatalf("WriteOpen of a read open: %v", err)
		}
		if o2, err := ReadOpen(&again); err != nil || o2 != o {
			t.Fatalf("round trip: %+v %v, want %+v", o2, err, o)
		}
	})
}

// A bulk stream on a gateway socket opens with the token frame: it round-trips,
// leaves what follows unread, and a bad one is refused by what is wrong with it.
func TestBulkToken(t *testing.T) {
	var b bytes.Buffer
	if err := WriteToken(&b, "tok.en"); err != nil {
		t.Fatal(err)
	}
	_ = WriteOpen(&b, Open{ChannelID: "c", InstanceID: "i"})
	if tok, err := ReadToken(&b); err != nil || tok != "tok.en" {
		t.Fatalf("ReadToken = %q, %v", tok, err)
	}
	if _, err := ReadOpen(&b); err != nil {
		t.Fatalf("the open frame after the token: %v", err)
	}
	if err := WriteToken(&b, ""); err == nil {
		t.Fatal("WriteToken sent an empty token")
	}
	for _, c := range []struct {
		name string
		in   []byte
		want string
	}{
		{"nothing", nil, "EOF"},
		{"open frame first", frame(BulkOpen, "{}"), "starts with the sandbox token"},
		{"empty", frame(BulkToken, ""), "empty"},
		{"over the limit", AppendHeader(nil, BulkToken, maxBulkToken+1), "over the size limit"},
		{"cut short", frame(BulkToken, "abcdef")[:8], "unexpected EOF"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := ReadToken(bytes.NewReader(c.in)); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("ReadToken = %v, want an error containing %q", err, c.want)
			}
		})
	}
}

// FuzzReadToken: the gateway reads a container's token frame; whatever it sends, a
// token within the limit or an error, never a panic or a read past the frame.
func FuzzReadToken(f *testing.F) {
	var b bytes.Buffer
	_ = WriteToken(&b, "eyJhbGciOiJFZERTQSJ9.e30.sig")
	f.Add(b.Bytes())
	f.Add(AppendHeader(nil, BulkToken, 1<<31))
	f.Add([]byte("t\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		tok, err := ReadToken(r)
		if err != nil {
			return
		}
		if tok == "" || len(tok) > maxBulkToken {
			t.Fatalf("ReadToken returned a token of %d bytes", len(tok))
		}
		if used := len(in) - r.Len(); used != HeaderLen+len(tok) {
			t.Fatalf("read %d bytes for a %d-byte token", used, len(tok))
		}
	})
}

// frame is one frame of kind with payload, as a peer would send it.
func frame(kind byte, payload string) []byte {
	return append(AppendHeader(nil, kind, len(payload)), payload...)
}
