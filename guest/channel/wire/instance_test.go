package wire

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestSecretAndPreamble(t *testing.T) {
	var s Secret
	for i := range s {
		s[i] = byte(i * 7)
	}
	got, err := ParseSecret(s.String())
	if err != nil || got != s {
		t.Fatalf("ParseSecret(String()) = %x, %v", got, err)
	}
	for _, bad := range []string{"", "abc", strings.Repeat("g", 64), strings.Repeat("ab", 31), strings.Repeat("ab", 33)} {
		if _, err := ParseSecret(bad); err == nil {
			t.Errorf("ParseSecret(%q) accepted", bad)
		}
	}
	p := AppendPreamble(nil, s)
	if len(p) != PreambleLen {
		t.Fatalf("preamble is %d bytes, want %d", len(p), PreambleLen)
	}
	r := bytes.NewReader(append(bytes.Clone(p), "rest"...))
	if err := CheckPreamble(r, s); err != nil || r.Len() != 4 {
		t.Fatalf("CheckPreamble = %v, %d bytes left; want nil and the 4 after it", err, r.Len())
	}
	other := s
	other[31]++
	if err := CheckPreamble(bytes.NewReader(p), other); !errors.Is(err, ErrWrongSecret) {
		t.Errorf("wrong secret: %v", err)
	}
	if err := CheckPreamble(bytes.NewReader(p[:10]), s); !errors.Is(err, ErrBadPreamble) {
		t.Errorf("short preamble: %v", err)
	}
	if err := CheckPreamble(strings.NewReader("GET / HTTP/1.1\r\nHost: x\r\n\r\n------"), s); !errors.Is(err, ErrBadPreamble) {
		t.Errorf("no preamble: %v", err)
	}
}

func FuzzParsePreamble(f *testing.F) {
	f.Add(AppendPreamble(nil, Secret{1}))
	f.Add([]byte("OSI1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParsePreamble(b)
		if err != nil {
			return
		}
		if !bytes.Equal(AppendPreamble(nil, s), b) {
			t.Fatalf("round trip mismatch for %x", b)
		}
	})
}

func FuzzParseSecret(f *testing.F) {
	f.Add(strings.Repeat("0a", 32))
	f.Add("zz")
	f.Fuzz(func(t *testing.T, s string) {
		sec, err := ParseSecret(s)
		if err != nil {
			return
		}
		if !strings.EqualFold(sec.String(), s) {
			t.Fatalf("ParseSecret(%q) = %s", s, sec)
		}
	})
}

// TestHostClock: the clock sent after BootstrapDone reads back to the nanosecond; a
// zero or far-off value (not a clock a host sends) is refused.
func TestHostClock(t *testing.T) {
	now := time.Now()
	b := AppendHostClock([]byte(BootstrapDone), now)
	if len(b) != len(BootstrapDone)+HostClockLen || string(b[:len(BootstrapDone)]) != BootstrapDone {
		t.Fatalf("encoded %q", b)
	}
	got, ok := ParseHostClock([HostClockLen]byte(b[len(BootstrapDone):]))
	if !ok || !got.Equal(now.Round(0)) {
		t.Fatalf("ParseHostClock = %v, %v; want %v", got, ok, now)
	}
	for _, bad := range []time.Time{time.Unix(0, 0), time.Date(2250, 1, 1, 0, 0, 0, 0, time.UTC)} {
		if _, ok := ParseHostClock([HostClockLen]byte(AppendHostClock(nil, bad))); ok {
			t.Errorf("%v was taken as a host clock", bad)
		}
	}
}
