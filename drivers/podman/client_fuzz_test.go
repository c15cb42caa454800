package podman

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The service's answers cross a trust boundary (a socket anyone in the service's user
// can serve): the parsers must not panic or loop on any input.

func FuzzDecodeEvents(f *testing.F) {
	f.Add([]byte(`{"Type":"container","Action":"start","Actor":{"ID":"abc","Attributes":{"openshell.ai/sandbox-id":"x"}},"timeNano":1}`))
	f.Add([]byte(`{"status":"died","Actor":{"Attributes":{"containerExitCode":"1"}}}` + "\n" + `{"Action":"remove"}`))
	f.Add([]byte(`{"Actor":`))
	f.Add([]byte("\x00\xff"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		out := make(chan event, 1024)
		done := make(chan error, 1)
		go func() { done <- decodeEvents(ctx, bytes.NewReader(data), out) }()
		var n int
		for {
			select {
			case ev := <-out:
				_ = ev.action()
				n++
				if n > len(data) {
					t.Fatalf("%d events from %d bytes", n, len(data))
				}
			case err := <-done:
				if err == nil && ctx.Err() == nil {
					t.Fatal("a finite stream ended without an error")
				}
				return
			}
		}
	})
}

func FuzzDemux(f *testing.F) {
	frame := func(stream byte, s string) []byte {
		h := []byte{stream, 0, 0, 0, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(h[4:], uint32(len(s)))
		return append(h, s...)
	}
	f.Add(append(frame(1, "out\n"), frame(2, "err\n")...))
	f.Add([]byte("plain tty output\n"))
	f.Add([]byte{1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 'x'})
	f.Fuzz(func(t *testing.T, data []byte) {
		var buf bytes.Buffer
		_ = demux(&buf, bytes.NewReader(data))
		if buf.Len() > len(data) {
			t.Fatalf("demux wrote %d bytes from %d", buf.Len(), len(data))
		}
	})
}

func FuzzCheckVersionAndErrorMessage(f *testing.F) {
	for _, s := range []string{"5.4.2", "4.3.1", "v5", "", "x.y", "99999999999999999999.1", `{"cause":"c","message":"m"}`, `{"message":""}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if err := checkVersion(s); err == nil {
			// Accepted: the text must start with a major version of at least 5.
			v := strings.TrimPrefix(strings.TrimSpace(s), "v")
			i := strings.IndexFunc(v, func(r rune) bool { return r < '0' || r > '9' })
			if i < 0 {
				i = len(v)
			}
			if major, err := strconv.Atoi(v[:i]); err != nil || major < MinVersion {
				t.Fatalf("checkVersion(%q) accepted it", s)
			}
		} else if !strings.Contains(err.Error(), "Podman") {
			t.Fatalf("checkVersion(%q) = %v: does not say what is wrong", s, err)
		}
		msg := errorMessage([]byte(s))
		if len(msg) > len(s) {
			t.Fatalf("errorMessage(%q) = %q grew", s, msg)
		}
		_, _ = io.Discard.Write([]byte(msg))
	})
}
