package transfer

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func framed(data []byte, exit *Exit) []byte {
	var b bytes.Buffer
	_, _ = FrameWriter{W: &b}.Write(data)
	if exit != nil {
		_ = WriteExit(&b, *exit)
	} else {
		_ = WriteEnd(&b)
	}
	return b.Bytes()
}

func TestFramesRoundTripAndRefuseBadStreams(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), MaxFrame/5) // two frames and a bit
	r := NewFrameReader(bytes.NewReader(framed(data, nil)), false)
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("server side read %d bytes, %v; want %d", len(got), err, len(data))
	}
	r = NewFrameReader(bytes.NewReader(framed([]byte("ok"), &Exit{Code: 13, Error: "denied"})), true)
	got, err = io.ReadAll(r)
	if err != nil || string(got) != "ok" || r.Exit() == nil || r.Exit().Code != 13 || r.Exit().Error != "denied" {
		t.Fatalf("client side read %q, %v, exit %+v", got, err, r.Exit())
	}
	for _, c := range []struct {
		name, want string
		stream     []byte
		exitOK     bool
	}{
		{"cut short", "without an end frame", framed([]byte("abc"), nil)[:8], false},
		{"oversized frame", "over the 1048576-byte limit", []byte{FrameData, 0xff, 0xff, 0xff, 0xff}, false},
		{"exit to the server", "unexpected frame kind 'x'", framed(nil, &Exit{}), false},
		{"end to the client", "unexpected frame kind 'e'", framed(nil, nil), true},
		{"end with a body", "must be empty", []byte{FrameEnd, 0, 0, 0, 1, 'x'}, false},
		{"huge exit", "exit frame of", []byte{FrameExit, 0, 0x10, 0, 0}, true},
		{"bad exit json", "exit frame", []byte{FrameExit, 0, 0, 0, 1, '{'}, true},
	} {
		_, err := io.ReadAll(NewFrameReader(bytes.NewReader(c.stream), c.exitOK))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", c.name, err, c.want)
		}
	}
}

// FuzzFrameReader: whatever either side of a relay sends, the reader ends with data,
// EOF or an error; it never panics, never returns more than the frames declared and
// never allocates past its limits.
func FuzzFrameReader(f *testing.F) {
	f.Add(framed([]byte("hello"), nil), false)
	f.Add(framed([]byte("hello"), &Exit{Code: 1, Error: "x"}), true)
	f.Add([]byte{FrameData, 0xff, 0xff, 0xff, 0xff}, false)
	f.Add([]byte{FrameExit, 0, 0, 0, 2, '{', '}'}, true)
	f.Fuzz(func(t *testing.T, stream []byte, exitOK bool) {
		r := NewFrameReader(bytes.NewReader(stream), exitOK)
		got, err := io.ReadAll(r)
		if len(got) > len(stream) {
			t.Fatalf("read %d bytes from a %d-byte stream", len(got), len(stream))
		}
		if err == nil && !exitOK && r.Exit() != nil {
			t.Fatal("server side accepted an exit frame")
		}
		if err == nil && exitOK && r.Exit() == nil {
			t.Fatal("client side ended without an exit frame")
		}
		if errors.Is(err, io.EOF) {
			t.Fatalf("io.EOF leaked as an error: %v", err)
		}
	})
}
