package wire

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestHeaderRoundTrip(t *testing.T) {
	for _, port := range []uint32{0, 1024, 1025, 1026, 1<<32 - 1} {
		var b bytes.Buffer
		if err := WriteHeader(&b, port); err != nil {
			t.Fatal(err)
		}
		got, err := ReadHeader(&b)
		if err != nil || got != port {
			t.Fatalf("port %d: got %d, %v", port, got, err)
		}
	}
	if _, err := ParseHeader([]byte("XXXX\x00\x00\x04\x00")); !errors.Is(err, ErrBadHeader) {
		t.Fatalf("bad magic accepted: %v", err)
	}
	if _, err := ReadHeader(strings.NewReader("OSP")); err == nil {
		t.Fatal("short header accepted")
	}
}

func TestWaitHello(t *testing.T) {
	in := "garbage\n\nOPENSHELL-CHANNEL" + Hello + "rest"
	br, err := WaitHello(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(br)
	if string(rest) != "rest" {
		t.Fatalf("after hello got %q", rest)
	}
	if _, err := WaitHello(strings.NewReader("no hello here")); !errors.Is(err, io.EOF) {
		t.Fatalf("want EOF, got %v", err)
	}
}

func FuzzParseHeader(f *testing.F) {
	f.Add(AppendHeader(nil, 1025))
	f.Add([]byte("OSP1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		port, err := ParseHeader(b)
		if err != nil {
			return
		}
		if !bytes.Equal(AppendHeader(nil, port), b) {
			t.Fatalf("round trip mismatch for %x", b)
		}
	})
}

func FuzzWaitHello(f *testing.F) {
	f.Add([]byte(Hello + "x"))
	f.Add([]byte("\n\nOPENSHELL-CHANNEL-1\nabc"))
	f.Fuzz(func(t *testing.T, b []byte) {
		br, err := WaitHello(bytes.NewReader(b))
		if err != nil {
			if bytes.Contains(b, []byte(Hello)) {
				t.Fatalf("hello present but not found: %v", err)
			}
			return
		}
		rest, _ := io.ReadAll(br)
		i := bytes.Index(b, []byte(Hello))
		if i < 0 || !bytes.Equal(rest, b[i+len(Hello):]) {
			t.Fatalf("rest %q does not follow the first hello in %q", rest, b)
		}
	})
}
